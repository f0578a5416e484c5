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
 * Device: name "Fake GPU 80GB", driver "999.01", power limit 350000 mW.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINES 4096

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
    field f = next_field(energy_f, &energy_pos);
    log_call("energy", f);
    if (f.code)
        return f.code;
    *energy_mj = f.value;
    return 0;
}

int nvmlDeviceGetPowerUsage(void *device, unsigned int *power_mw)
{
    field f = next_field(power_f, &power_pos);
    log_call("power", f);
    if (f.code)
        return f.code;
    *power_mw = (unsigned int)f.value;
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
