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
 *   FAKE_NVML_COUNT   optional device count (default 1).  Several devices: a script line may
 *                     hold one "ENERGY POWER" pair per device ("E0 P0 E1 P1 ..."; a device
 *                     without its own pair takes the first), each device with its own
 *                     cursors; the log names device d > 0 "energy@d" / "power@d".
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
 *   FAKE_NVML_DEVICE_W "W0,W1,...": device d draws the constant power Wd (watts) instead of
 *                     the wave (sets the real-card mode without FAKE_NVML_WAVE; a device
 *                     past the list draws the wave, or 0 W).  Device d's counter updates on
 *                     its own phase: d * UPDATE_MS / 2 after T0, then every UPDATE_MS.
 *   FAKE_NVML_NO_COUNTER_ON "d,e,...": those devices have no energy counter (NOT_SUPPORTED).
 * Device d: name "Fake GPU 80GB" (d = 0) or "Fake GPU 80GB #d", driver "999.01", power
 * limit 350000 mW.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LINES 4096
#define MAX_DEV 16
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
static int n_const, const_set[MAX_DEV], no_counter_on[MAX_DEV];
static double const_w[MAX_DEV];
static int device_tokens[MAX_DEV]; /* the address of device_tokens[d] is device d's handle */

static int device_of(void *device)
{
    long d = (int *)device - device_tokens;
    return d >= 0 && d < MAX_DEV ? (int)d : 0;
}

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
    if (!wave_period_ns)
        return 0.0;
    if (u <= 0)
        return 0.0;
    long long k = u / wave_period_ns, r = u % wave_period_ns, half = wave_period_ns / 2;
    long long high = k * half + (r < half ? r : half);
    return (wave_low_w * (double)u + (wave_high_w - wave_low_w) * (double)high) * 1e-6;
}

static double wave_power_w(long long t)
{
    long long u = t - wave_t0_ns;
    if (!wave_period_ns)
        return 0.0;
    if (u < 0)
        return wave_low_w;
    return (u % wave_period_ns) < wave_period_ns / 2 ? wave_high_w : wave_low_w;
}

/* Device d's exact mJ over [t0, t) and its power at t. */
static double dev_mj(int d, long long t)
{
    if (d < MAX_DEV && const_set[d])
        return t > wave_t0_ns ? const_w[d] * (double)(t - wave_t0_ns) * 1e-6 : 0.0;
    return wave_mj(t);
}

static double dev_power_w(int d, long long t)
{
    return d < MAX_DEV && const_set[d] ? const_w[d] : wave_power_w(t);
}

/* "a,b,c" of numbers into out (at most MAX_DEV); returns how many. */
static int parse_list(const char *text, double *out)
{
    int n = 0;
    char *end = NULL;
    while (text && *text && n < MAX_DEV) {
        out[n++] = strtod(text, &end);
        if (end == text || *end != ',')
            break;
        text = end + 1;
    }
    return n;
}

static void load_wave(void)
{
    const char *w = getenv("FAKE_NVML_WAVE");
    double period_ms = 0, list[MAX_DEV];
    n_const = parse_list(getenv("FAKE_NVML_DEVICE_W"), const_w);
    for (int d = 0; d < MAX_DEV; d++)
        const_set[d] = d < n_const, no_counter_on[d] = 0;
    int n_off = parse_list(getenv("FAKE_NVML_NO_COUNTER_ON"), list);
    for (int i = 0; i < n_off; i++)
        if (list[i] >= 0 && list[i] < MAX_DEV)
            no_counter_on[(int)list[i]] = 1;
    wave = w && sscanf(w, "%lf,%lf,%lf", &wave_low_w, &wave_high_w, &period_ms) == 3 && period_ms > 0;
    if (!wave && n_const == 0)
        return;
    wave = 1;
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

static field energy_f[MAX_DEV][MAX_LINES], power_f[MAX_DEV][MAX_LINES];
static int n_lines, energy_pos[MAX_DEV], power_pos[MAX_DEV], loaded, inited;

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
    char line[1024];
    if (!f)
        return;
    while (n_lines < MAX_LINES && fgets(line, sizeof line, f)) {
        char *tok[2 * MAX_DEV], *save = NULL;
        int k = 0;
        if (line[0] == '#')
            continue;
        for (char *t = strtok_r(line, " \t\r\n", &save); t && k < 2 * MAX_DEV; t = strtok_r(NULL, " \t\r\n", &save))
            tok[k++] = t;
        if (k < 2)
            continue;
        for (int d = 0; d < MAX_DEV; d++) {
            int at = 2 * d + 1 < k ? 2 * d : 0; /* a device without its own pair takes the first */
            energy_f[d][n_lines] = parse_field(tok[at]);
            power_f[d][n_lines] = parse_field(tok[at + 1]);
        }
        n_lines++;
    }
    fclose(f);
}

static void log_dev(const char *what, int d, field fl)
{
    const char *path = getenv("FAKE_NVML_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    char name[64];
    if (!f)
        return;
    if (d > 0)
        snprintf(name, sizeof name, "%s@%d", what, d);
    else
        snprintf(name, sizeof name, "%s", what);
    if (fl.code)
        fprintf(f, "%s E%d\n", name, fl.code);
    else
        fprintf(f, "%s %llu\n", name, fl.value);
    fclose(f);
}

static void log_call(const char *what, field fl)
{
    log_dev(what, 0, fl);
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
    if (index >= MAX_DEV)
        return 2;
    *device = &device_tokens[index];
    return 0;
}

int nvmlDeviceGetTotalEnergyConsumption(void *device, unsigned long long *energy_mj)
{
    int d = device_of(device);
    if (wave) {
        if (no_counter || no_counter_on[d])
            return 3;
        long long phase = (d * update_ns) / 2 % update_ns;
        long long t = mono_ns(), u = t - wave_t0_ns - phase;
        long long tick = u > 0 ? wave_t0_ns + phase + (u / update_ns) * update_ns : wave_t0_ns;
        *energy_mj = (unsigned long long)dev_mj(d, tick);
        field served = {0, *energy_mj};
        log_dev("energy", d, served);
        return 0;
    }
    field f = next_field(energy_f[d], &energy_pos[d]);
    log_dev("energy", d, f);
    if (f.code)
        return f.code;
    *energy_mj = f.value;
    return 0;
}

int nvmlDeviceGetPowerUsage(void *device, unsigned int *power_mw)
{
    int d = device_of(device);
    if (wave) { /* the mean over the last second, as Ampere and later report */
        long long t = mono_ns();
        *power_mw = (unsigned int)((dev_mj(d, t) - dev_mj(d, t - 1000000000LL)) + 0.5);
        return 0;
    }
    field f = next_field(power_f[d], &power_pos[d]);
    log_dev("power", d, f);
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
            v->value.uiVal = (unsigned int)(dev_power_w(device_of(device), t) * 1000.0 + 0.5);
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
    int d = device_of(device);
    if (d == 0)
        snprintf(name, length, "Fake GPU 80GB");
    else
        snprintf(name, length, "Fake GPU 80GB #%d", d);
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
