/* replay_main.c: run the fuzz target once over every file of a corpus, without
 * libFuzzer (make fuzz-replay, part of make test).
 *
 * Arguments are files or directories (one level: every regular file inside, in name
 * order).  Each file is read whole and passed to LLVMFuzzerTestOneInput; a crash, a
 * sanitizer report or a failed property (__builtin_trap in the target) ends the
 * program with a non-zero status.  Prints how many inputs it ran; exits 1 when it
 * found none (an empty or missing corpus is a failure, not a pass).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Read path into a malloc'd buffer (caller frees); NULL on error. */
static uint8_t *read_file(const char *path, size_t *size)
{
    uint8_t *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        goto error;
    if (fseek(f, 0, SEEK_END) != 0)
        goto error;
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto error;
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        goto error;
    fclose(f);
    *size = (size_t)n;
    return buf;
error:
    free(buf);
    if (f)
        fclose(f);
    return NULL;
}

static int run_one(const char *path)
{
    size_t size = 0;
    uint8_t *data = read_file(path, &size);
    if (!data) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of dir, in name order; returns the count run, -1 on error. */
static int run_dir(const char *dir)
{
    int count = 0;
    size_t n = 0, cap = 0;
    char **names = NULL;
    DIR *d = opendir(dir);
    if (!d)
        goto error;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown)
                goto error;
            names = grown;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n])
            goto error;
        snprintf(names[n], len, "%s/%s", dir, e->d_name);
        n++;
    }
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_one(names[i]) < 0)
                goto error;
            count++;
        }
    }
    goto out;
error:
    fprintf(stderr, "replay: cannot read the directory %s\n", dir);
    count = -1;
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (d)
        closedir(d);
    return count;
}

int main(int argc, char **argv)
{
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s does not exist\n", argv[i]);
            return 1;
        }
        int k = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_one(argv[i]);
        if (k < 0)
            return 1;
        total += k;
    }
    printf("fuzz replay: %d input(s), no crash, no sanitizer report\n", total);
    return total > 0 ? 0 : 1;
}
