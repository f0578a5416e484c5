/* fake_nvml.c: a stand-in libnvidia-ml.so.1 for tests, built by the tests with
 *   gcc -shared -fPIC -o DIR/libnvidia-ml.so.1 tests/fake_nvml/fake_nvml.c
 * and selected with ENERGYPROF_NVML_LIB=DIR/libnvidia-ml.so.1.
 *
 * It exports the NVML entry points energyprof uses.  Values follow a script:
 *   FAKE_NVML_SCRIPT  file of lines "ENERGY POWER" (# starts a comment).  Each
 *                     nvmlDeviceGetTotalEnergyConsumption call takes the ENERGY
 *                     field of the next line (its own cursor), each
 *                     nvmlDeviceGetPowerUsage call the POWER field of the next line
 *                     (another cursor).  A field is a number (mJ / mW), NS for
 *                     NOT_SUPPORTED, or E<code> for an NVML error code (E15 = GPU
 *                     is lost).  After the last line, the last line repeats.
 *   FAKE_NVML_LOG     optional file: nvmlInit_v2 appends "init 0", every read "energy VALUE" or
 *                     "power VALUE" (or the code) so a test driven by a real
 *                     sampler thread knows exactly which values were served.
 *   FAKE_NVML_INIT    optional NVML code returned by nvmlInit_v2 (e.g. 9).
 *   FAKE_NVML_COUNT   optional device count (default 1).
 * A real card instead of a script (FAKE_NVML_WAVE set; the script is then ignored):
 *   FAKE_NVML_WAVE    "LOW_W,HIGH_W,PERIOD_MS": the true power, HIGH_W during the first half
 *                     of each period from FAKE_NVML_T0_NS (CLOCK_MONOTONIC ns; default: the
 *                     first nvmlInit_v2), LOW_W in the second.
 *   FAKE_NVML_UPDATE_MS  the energy counter advances only every N ms (default 100): a read
 *                     returns the exact energy up to the last update tick, in whole mJ.
 *   nvmlDeviceGetPowerUsage returns the power averaged over the last 1 s (Ampere and later);
 *   nvmlDeviceGetFieldValues with NVML_FI_DEV_POWER_INSTANT (186) the instant power (mW).
 *   FAKE_NVML_NO_COUNTER=1  the energy counter is NOT_SUPPORTED (pre-Volta).
 *   FAKE_NVML_NO_FIELDS=1   field values are NOT_SUPPORTED (an old driver).
 * Device: name "Fake GPU 80GB", driver "999.01", power limit 350000 mW.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LINES 4096
#define FI_DEV_POWER_INSTANT 186

/* nvmlFieldValue_t, declared from NVML's documentation (40 bytes). */
typedef struct {
    unsigned int fieldId, scopeId;
    long long timestamp, latencyUsec;
    int valueType, nvmlReturn;
    union {
        double dVal;
        unsigned int uiVal;
        unsigned long ulVal;
        unsigned long long ullVal;
        long long sllVal;
    } value;
} fake_field_value;

static int wave, no_counter, no_fields;
static double wave_low_w, wave_high_w;
static long long wave_period_ns, update_ns = 100000000LL, wave_t0_ns = -1;

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Exact mJ of the wave over [t0, t). */
static double wave_mj(long long t)
{
    long long u = t - wave_t0_ns;
    if (u <= 0)
        return 0.0;
    long long k = u / wave_period_ns, r = u % wave_period_ns, half = wave_period_ns / 2;
    long long high = k * half + (r < half ? r : half);
    return (wave_low_w * (double)u + (wave_high_w - wave_low_w) * (double)high) * 1e-6;
}

static double wave_power_w(long long t)
{
    long long u = t - wave_t0_ns;
    if (u < 0)
        return wave_low_w;
    return (u % wave_period_ns) < wave_period_ns / 2 ? wave_high_w : wave_low_w;
}

static void load_wave(void)
{
    const char *w = getenv("FAKE_NVML_WAVE");
    double period_ms = 0;
    wave = w && sscanf(w, "%lf,%lf,%lf", &wave_low_w, &wave_high_w, &period_ms) == 3 && period_ms > 0;
    if (!wave)
        return;
    wave_period_ns = (long long)(period_ms * 1e6);
    const char *u = getenv("FAKE_NVML_UPDATE_MS");
    if (u && atof(u) > 0)
        update_ns = (long long)(atof(u) * 1e6);
    const char *t0 = getenv("FAKE_NVML_T0_NS");
    if (wave_t0_ns < 0)
        wave_t0_ns = t0 ? atoll(t0) : mono_ns();
    no_counter = getenv("FAKE_NVML_NO_COUNTER") && atoi(getenv("FAKE_NVML_NO_COUNTER"));
    no_fields = getenv("FAKE_NVML_NO_FIELDS") && atoi(getenv("FAKE_NVML_NO_FIELDS"));
}

typedef struct {
    int code;                /* 0 = value, else NVML error code */
    unsigned long long value;
} field;

static field energy_f[MAX_LINES], power_f[MAX_LINES];
static int n_lines, energy_pos, power_pos, loaded, inited;
static int fake_device_token; /* the address is the device handle */

static field parse_field(const char *t)
{
    field f = {0, 0};
    if (strcmp(t, "NS") == 0)
        f.code = 3;
    else if (t[0] == 'E')
        f.code = atoi(t + 1);
    else
        f.value = strtoull(t, NULL, 10);
    return f;
}

static void load_script(void)
{
    if (loaded)
        return;
    loaded = 1;
    const char *path = getenv("FAKE_NVML_SCRIPT");
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[256], a[64], b[64];
    if (!f)
        return;
    while (n_lines < MAX_LINES && fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        if (sscanf(line, "%63s %63s", a, b) != 2)
            continue;
        energy_f[n_lines] = parse_field(a);
        power_f[n_lines] = parse_field(b);
        n_lines++;
    }
    fclose(f);
}

static void log_call(const char *what, field fl)
{
    const char *path = getenv("FAKE_NVML_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f)
        return;
    if (fl.code)
        fprintf(f, "%s E%d\n", what, fl.code);
    else
        fprintf(f, "%s %llu\n", what, fl.value);
    fclose(f);
}

static field next_field(field *arr, int *pos)
{
    field none = {999, 0};
    if (n_lines == 0)
        return none;
    int i = *pos < n_lines ? *pos : n_lines - 1;
    (*pos)++;
    return arr[i];
}

int nvmlInit_v2(void)
{
    const char *c = getenv("FAKE_NVML_INIT");
    if (c && atoi(c) != 0)
        return atoi(c);
    load_script();
    load_wave();
    inited = 1;
    field marker = {0, 0};
    log_call("init", marker);
    return 0;
}

int nvmlShutdown(void)
{
    inited = 0;
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned int *count)
{
    const char *c = getenv("FAKE_NVML_COUNT");
    if (!inited)
        return 1; /* UNINITIALIZED */
    *count = c ? (unsigned int)atoi(c) : 1u;
    return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device)
{
    unsigned int count = 0;
    nvmlDeviceGetCount_v2(&count);
    if (index >= count)
        return 2; /* INVALID_ARGUMENT */
    *device = &fake_device_token;
    return 0;
}

int nvmlDeviceGetTotalEnergyConsumption(void *device, unsigned long long *energy_mj)
{
    if (wave) {
        if (no_counter)
            return 3;
        long long t = mono_ns(), u = t - wave_t0_ns;
        long long tick = u > 0 ? wave_t0_ns + (u / update_ns) * update_ns : wave_t0_ns;
        *energy_mj = (unsigned long long)wave_mj(tick);
        field served = {0, *energy_mj};
        log_call("energy", served);
        return 0;
    }
    field f = next_field(energy_f, &energy_pos);
    log_call("energy", f);
    if (f.code)
        return f.code;
    *energy_mj = f.value;
    return 0;
}

int nvmlDeviceGetPowerUsage(void *device, unsigned int *power_mw)
{
    if (wave) { /* the mean over the last second, as Ampere and later report */
        long long t = mono_ns();
        *power_mw = (unsigned int)((wave_mj(t) - wave_mj(t - 1000000000LL)) + 0.5);
        return 0;
    }
    field f = next_field(power_f, &power_pos);
    log_call("power", f);
    if (f.code)
        return f.code;
    *power_mw = (unsigned int)f.value;
    return 0;
}

int nvmlDeviceGetFieldValues(void *device, int count, fake_field_value *values)
{
    if (!values || count < 0)
        return 2;
    for (int i = 0; i < count; i++) {
        fake_field_value *v = &values[i];
        if (wave && !no_fields && v->fieldId == FI_DEV_POWER_INSTANT) {
            long long t = mono_ns();
            v->timestamp = t / 1000;
            v->latencyUsec = 0;
            v->valueType = 1; /* NVML_VALUE_TYPE_UNSIGNED_INT */
            v->nvmlReturn = 0;
            v->value.uiVal = (unsigned int)(wave_power_w(t) * 1000.0 + 0.5);
        } else {
            v->nvmlReturn = 3; /* NOT_SUPPORTED */
        }
    }
    return 0;
}

int nvmlDeviceGetPowerManagementLimit(void *device, unsigned int *limit_mw)
{
    *limit_mw = 350000u;
    return 0;
}

int nvmlDeviceGetName(void *device, char *name, unsigned int length)
{
    snprintf(name, length, "Fake GPU 80GB");
    return 0;
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    snprintf(version, length, "999.01");
    return 0;
}

const char *nvmlErrorString(int result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 9: return "Driver Not Loaded";
    case 15: return "GPU is lost";
    default: return "Unknown Error";
    }
}
