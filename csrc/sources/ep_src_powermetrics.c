/* ep_src_powermetrics.c: the 'powermetrics' power source: a live
 * `powermetrics -f plist -i N --samplers cpu_power,gpu_power,thermal` child.
 *
 * Spec: powermetrics[:interval_ms=N,samplers=cpu_power+gpu_power+thermal,binary=PATH]
 * (C keys: interval_ms, samplers, binary; tests may add stop_timeout_ms).
 *
 * The child is spawned with an argv array (posix_spawn, no shell) in its own
 * process group, so a Ctrl-C in the terminal reaches Python, not powermetrics, and
 * we stop it ourselves.  Without binary= and when not root it runs as
 * `sudo -n /opt/energyprof/bin/energyprof-powermetrics -f plist -i N --samplers ...`:
 * the root-owned wrapper and the sudoers rule that scripts/setup_powermetrics.sh
 * installs; the wrapper runs /usr/bin/powermetrics with exactly those arguments and
 * refuses any others (no -o, which would write a file as root).
 * stdout and stderr are pipes read non-blocking in poll; stdout goes through the
 * framer (ep_plist.h) and the parser.  Each document averages its own elapsed_ns
 * ending when powermetrics wrote it, so a sample ends at its receive time and starts
 * elapsed_ns earlier, but never before the previous sample's end.
 * Stop: SIGINT, up to stop_timeout_ms (2 s) for it to exit, then SIGKILL; the child
 * is always reaped and both pipes closed.  When the child exits by itself the
 * samples it delivered are kept, the damage (truncated document, garbage bytes) is
 * counted in src->faults, and poll returns EP_ERR_EOF with a message saying what
 * happened; "must be invoked as the superuser" turns into a hint about sudo.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ep_clock.h"
#include "ep_errors.h"
#include "ep_plist.h"
#include "ep_source.h"

#ifdef __APPLE__
/* A bundle (the Python extension) has no direct access to environ on macOS. */
#include <crt_externs.h>
#define ep_environ (*_NSGetEnviron())
#else
extern char **environ;
#define ep_environ environ
#endif

#define PM_DEFAULT_BINARY "/usr/bin/powermetrics"
#define PM_SUDO "/usr/bin/sudo"
/* Installed by scripts/setup_powermetrics.sh; keep the two in step. */
#define PM_WRAPPER "/opt/energyprof/bin/energyprof-powermetrics"
#define READ_CHUNK (64 * 1024)
/* At most this much is read per poll, so one poll never stalls the sampler. */
#define READ_PER_POLL ((size_t)4 << 20)
#define STDERR_KEEP 512

typedef struct {
    char *binary;              /* owned: program to run                      */
    int use_sudo;              /* run as sudo -n PM_WRAPPER (same arguments)  */
    char interval_arg[24];     /* -i value, ms                               */
    char samplers[256];        /* comma-joined sampler names                 */
    int64_t stop_timeout_ns;

    pid_t pid;                 /* 0: no child                                */
    int out_fd, err_fd;        /* -1 when closed                             */
    int out_eof;
    int ended;
    int exit_status;           /* waitpid status, valid once reaped          */
    int reaped;
    ep_plist_framer *framer;   /* owned                                      */
    char err_text[STDERR_KEEP];/* first bytes of the child's stderr          */
    size_t err_len;
    int64_t prev_end_ns;       /* end of the last sample (or the start time) */
    int64_t n_docs, n_samples, framer_faults, unplaced;
    int64_t cut_bytes;         /* size of a document the output ended inside */
} pm_state;

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Read what stderr has (non-blocking); keep the first STDERR_KEEP - 1 bytes. */
static void drain_stderr(pm_state *st)
{
    char buf[4096];
    while (st->err_fd >= 0) {
        ssize_t r = read(st->err_fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                close_fd(&st->err_fd);
            return;
        }
        size_t room = sizeof st->err_text - 1 - st->err_len;
        size_t k = (size_t)r < room ? (size_t)r : room;
        memcpy(st->err_text + st->err_len, buf, k);
        st->err_len += k;
        st->err_text[st->err_len] = '\0';
    }
}

/* Read stdout into the framer, at most max bytes; sets out_eof at end of stream. */
static int drain_stdout(ep_source *src, pm_state *st, size_t max)
{
    char buf[READ_CHUNK];
    size_t total = 0;
    while (st->out_fd >= 0 && total < max) {
        ssize_t r = read(st->out_fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return EP_OK;
        if (r <= 0) {
            if (r < 0) {
                src->faults++;
                snprintf(src->message, sizeof src->message, "powermetrics: read error: %s", strerror(errno));
            }
            close_fd(&st->out_fd);
            st->out_eof = 1;
            ep_plist_framer_finish(st->framer);
            return EP_OK;
        }
        total += (size_t)r;
        int rc = ep_plist_framer_feed(st->framer, buf, (size_t)r);
        if (rc != EP_OK)
            return rc;
    }
    return EP_OK;
}

/* Wait for the child up to timeout_ns (0: just check).  1 when reaped. */
static int wait_child(pm_state *st, int64_t timeout_ns, ep_source *src, int keep_reading)
{
    int64_t deadline = ep_now_ns() + timeout_ns;
    for (;;) {
        int status = 0;
        pid_t r = waitpid(st->pid, &status, WNOHANG);
        if (r == st->pid || (r < 0 && errno == ECHILD)) {
            st->exit_status = r == st->pid ? status : 0;
            st->reaped = 1;
            st->pid = 0;
            return 1;
        }
        if (ep_now_ns() >= deadline)
            return 0;
        /* Keep the pipes moving: a child blocked on a full pipe never exits. */
        if (keep_reading) {
            drain_stdout(src, st, READ_PER_POLL);
            drain_stderr(st);
        }
        sleep_ns(5 * 1000 * 1000);
    }
}

/* SIGINT, wait, SIGKILL, reap.  Always leaves no child behind. */
static void terminate_child(ep_source *src, pm_state *st, int keep_reading)
{
    if (st->pid <= 0)
        return;
    if (wait_child(st, 0, src, 0))
        return;
    kill(st->pid, SIGINT);
    if (wait_child(st, st->stop_timeout_ns, src, keep_reading))
        return;
    /* With sudo in between the real powermetrics (root) survives SIGKILL of sudo;
     * closing our end makes its next write fail with SIGPIPE. */
    close_fd(&st->out_fd);
    close_fd(&st->err_fd);
    kill(st->pid, SIGKILL);
    int status = 0;
    while (waitpid(st->pid, &status, 0) < 0 && errno == EINTR) {
    }
    st->exit_status = status;
    st->reaped = 1;
    st->pid = 0;
}

static int set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static int pm_start(ep_source *src, int64_t t_now_ns)
{
    pm_state *st = src->state;
    int rc = EP_ERR_CHILD;
    int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int fa_ok = 0, attr_ok = 0;
    const char *argv[12];
    int a = 0;

    if (st->pid > 0) {
        snprintf(src->message, sizeof src->message, "powermetrics: already running");
        return EP_ERR_STATE;
    }
    /* A restart after stop begins a fresh stream. */
    ep_plist_framer_free(st->framer);
    st->framer = NULL;
    rc = ep_plist_framer_new(0, &st->framer);
    if (rc != EP_OK)
        goto error;
    rc = EP_ERR_CHILD;
    st->out_eof = st->ended = st->reaped = 0;
    st->exit_status = 0;
    st->err_len = 0;
    st->err_text[0] = '\0';
    st->n_docs = st->n_samples = st->framer_faults = st->unplaced = st->cut_bytes = 0;
    st->prev_end_ns = t_now_ns;

    if (st->use_sudo) {
        argv[a++] = PM_SUDO;
        argv[a++] = "-n"; /* never prompt: fail with a message instead of hanging */
        argv[a++] = PM_WRAPPER; /* the only command the sudoers rule allows */
    } else {
        argv[a++] = st->binary;
    }
    argv[a++] = "-f";
    argv[a++] = "plist";
    argv[a++] = "-i";
    argv[a++] = st->interval_arg;
    argv[a++] = "--samplers";
    argv[a++] = st->samplers;
    argv[a] = NULL;

    /* pipe() + FD_CLOEXEC rather than pipe2(): macOS, the real target, has no pipe2. */
    if (pipe(out_pipe) < 0 || pipe(err_pipe) < 0) {
        snprintf(src->message, sizeof src->message, "powermetrics: pipe: %s", strerror(errno));
        rc = EP_ERR_IO;
        goto error;
    }
    if (set_nonblock_cloexec(out_pipe[0]) < 0 || set_nonblock_cloexec(err_pipe[0]) < 0 ||
        fcntl(out_pipe[1], F_SETFD, FD_CLOEXEC) < 0 || fcntl(err_pipe[1], F_SETFD, FD_CLOEXEC) < 0) {
        snprintf(src->message, sizeof src->message, "powermetrics: fcntl: %s", strerror(errno));
        rc = EP_ERR_IO;
        goto error;
    }
    if (posix_spawn_file_actions_init(&fa) != 0)
        goto error;
    fa_ok = 1;
    if (posix_spawnattr_init(&attr) != 0)
        goto error;
    attr_ok = 1;
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    /* Python ignores SIGPIPE and a thread may block signals: the child gets defaults. */
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    if (posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2) != 0 ||
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) != 0 ||
        posix_spawnattr_setpgroup(&attr, 0) != 0 || posix_spawnattr_setsigmask(&attr, &none) != 0 ||
        posix_spawnattr_setsigdefault(&attr, &defaults) != 0)
        goto error;
    pid_t pid = 0;
    int err = posix_spawn(&pid, argv[0], &fa, &attr, (char *const *)argv, ep_environ);
    if (err != 0) {
        rc = err == ENOENT ? EP_ERR_NOTFOUND : (err == EACCES || err == EPERM) ? EP_ERR_PERM : EP_ERR_CHILD;
        snprintf(src->message, sizeof src->message, "powermetrics: cannot run '%.150s': %s", argv[0], strerror(err));
        goto error;
    }
    st->pid = pid;
    close(out_pipe[1]);
    close(err_pipe[1]);
    st->out_fd = out_pipe[0];
    st->err_fd = err_pipe[0];
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return EP_OK;
error:
    for (int i = 0; i < 2; i++) {
        close_fd(&out_pipe[i]);
        close_fd(&err_pipe[i]);
    }
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (attr_ok)
        posix_spawnattr_destroy(&attr);
    if (!src->message[0])
        snprintf(src->message, sizeof src->message, "powermetrics: cannot start the child: %s", ep_err_str(rc));
    return rc;
}

/* Frame and parse what is buffered into out (at most cap), placed on the clock
 * with receive time t_recv_ns. */
static int take_frames(ep_source *src, pm_state *st, int64_t t_recv_ns, ep_sample *out, size_t cap,
                       size_t *n_out, int final, int *exhausted)
{
    size_t n = 0;
    *exhausted = 0;
    int64_t elapsed[256];
    if (cap > sizeof elapsed / sizeof *elapsed)
        cap = sizeof elapsed / sizeof *elapsed;
    while (n < cap) {
        ep_plist_frame fr;
        if (ep_plist_framer_next(st->framer, &fr) != EP_OK) {
            *exhausted = 1;
            break;
        }
        st->n_docs++;
        if (!fr.complete) {
            /* Only a stream that ended gives an incomplete frame.  At our own stop
             * (SIGINT mid-write) that is expected; otherwise it is damage. */
            if (!final) {
                src->faults++;
                st->cut_bytes = (int64_t)fr.len;
                snprintf(src->message, sizeof src->message,
                         "powermetrics: output ended inside a document (%zu bytes of it discarded)", fr.len);
            }
            continue;
        }
        ep_plist_extras x;
        char err[96] = "";
        int rc = ep_plist_parse(fr.data, fr.len, &out[n], &x, err, sizeof err);
        if (rc == EP_ERR_NOMEM)
            return rc;
        if (rc != EP_OK || x.elapsed_ns <= 0) {
            src->faults++;
            snprintf(src->message, sizeof src->message, "powermetrics: document %lld skipped (%zu bytes): %s",
                     (long long)st->n_docs, fr.len, rc != EP_OK ? err : "no positive elapsed_ns");
            continue;
        }
        elapsed[n++] = x.elapsed_ns;
    }
    {
        ep_plist_framer_stats fs;
        ep_plist_framer_stats_get(st->framer, &fs);
        int64_t now = fs.oversize + fs.garbage_runs;
        if (now > st->framer_faults) {
            src->faults += now - st->framer_faults;
            st->framer_faults = now;
            snprintf(src->message, sizeof src->message,
                     "powermetrics: skipped %lld byte(s) of non-plist output (starting '%.60s') and %lld oversize frame(s)",
                     (long long)fs.garbage_bytes, fs.garbage_head, (long long)fs.oversize);
        }
    }
    /* Documents that arrived together end one after another up to the receive time;
     * none starts before the previous sample ended. */
    int64_t end = t_recv_ns;
    for (size_t i = n; i-- > 0;) {
        out[i].t_end_ns = end;
        out[i].t_start_ns = end - elapsed[i];
        end = out[i].t_start_ns;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        ep_sample s = out[i];
        if (s.t_start_ns < st->prev_end_ns)
            s.t_start_ns = st->prev_end_ns;
        if (s.t_end_ns <= s.t_start_ns) {
            /* No room left on the clock: its energy cannot be placed honestly. */
            st->unplaced++;
            src->faults++;
            snprintf(src->message, sizeof src->message,
                     "powermetrics: %lld sample(s) arrived in a burst and overlap earlier ones; dropped",
                     (long long)st->unplaced);
            continue;
        }
        st->prev_end_ns = s.t_end_ns;
        out[k++] = s;
    }
    st->n_samples += (int64_t)k;
    *n_out = k;
    return EP_OK;
}

static int contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

/* The EOF message: what the child did and what was lost. */
static void describe_exit(ep_source *src, pm_state *st)
{
    ep_plist_framer_stats fs;
    ep_plist_framer_stats_get(st->framer, &fs);
    char how[64];
    if (!st->reaped)
        snprintf(how, sizeof how, "closed its output");
    else if (WIFEXITED(st->exit_status))
        snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(st->exit_status));
    else if (WIFSIGNALED(st->exit_status))
        snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(st->exit_status));
    else
        snprintf(how, sizeof how, "ended");
    /* First line of stderr, for the message. */
    char first[120];
    size_t i = 0;
    const char *e = st->err_text;
    while (*e == '\n' || *e == ' ')
        e++;
    for (; e[i] && e[i] != '\n' && i + 1 < sizeof first; i++)
        first[i] = e[i];
    first[i] = '\0';
    int needs_root = contains(st->err_text, "superuser") || contains(fs.garbage_head, "superuser") ||
                     contains(st->err_text, "password is required");
    if (needs_root) {
        snprintf(src->message, sizeof src->message,
                 "powermetrics needs root (it said: '%.80s'): run sudo bash scripts/setup_powermetrics.sh to "
                 "allow 'sudo -n " PM_WRAPPER "', or run under sudo",
                 first[0] ? first : "must be invoked as the superuser");
        return;
    }
    char cut[64] = "";
    if (st->cut_bytes)
        snprintf(cut, sizeof cut, " (output ended inside a document: %lld bytes lost)", (long long)st->cut_bytes);
    snprintf(src->message, sizeof src->message,
             "powermetrics %s after %lld sample(s); %lld fault(s)%s, %lld byte(s) of garbage%s%.60s%s", how,
             (long long)st->n_samples, (long long)src->faults, cut, (long long)fs.garbage_bytes,
             first[0] ? "; stderr: '" : "", first, first[0] ? "'" : "");
}

static int pm_poll(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    pm_state *st = src->state;
    *n_out = 0;
    if (st->ended)
        return EP_ERR_EOF;
    if (!st->framer) {
        snprintf(src->message, sizeof src->message, "powermetrics: poll before start");
        return EP_ERR_STATE;
    }
    int rc = drain_stdout(src, st, READ_PER_POLL);
    drain_stderr(st);
    if (rc != EP_OK)
        return rc;
    int exhausted = 0;
    rc = take_frames(src, st, t_now_ns, out, cap, n_out, 0, &exhausted);
    if (rc != EP_OK || !exhausted || !st->out_eof)
        return rc;
    /* stdout is closed: the child is exiting.  Collect stderr, reap, explain. */
    if (!wait_child(st, 1000 * 1000 * 1000, src, 0))
        terminate_child(src, st, 0);
    drain_stderr(st);
    close_fd(&st->err_fd);
    st->ended = 1;
    describe_exit(src, st);
    return EP_ERR_EOF;
}

static int pm_stop(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    pm_state *st = src->state;
    *n_out = 0;
    if (!st->framer)
        return EP_OK;
    if (st->pid > 0)
        terminate_child(src, st, 1);
    /* What it wrote before exiting: whole documents become the last samples. */
    if (!st->out_eof)
        drain_stdout(src, st, READ_PER_POLL);
    drain_stderr(st);
    if (!st->out_eof)
        ep_plist_framer_finish(st->framer);
    int exhausted = 0;
    int rc = st->ended ? EP_OK : take_frames(src, st, ep_now_ns(), out, cap, n_out, 1, &exhausted);
    close_fd(&st->out_fd);
    close_fd(&st->err_fd);
    st->ended = 1;
    return rc;
}

static void pm_destroy(ep_source *src)
{
    pm_state *st = src->state;
    if (!st)
        return;
    if (st->pid > 0)
        terminate_child(src, st, 0);
    close_fd(&st->out_fd);
    close_fd(&st->err_fd);
    ep_plist_framer_free(st->framer);
    free(st->binary);
    free(st);
    src->state = NULL;
}

static int is_executable(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && access(path, X_OK) == 0;
}

static int parse_positive_int(const char *s, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v <= 0 || v > max)
        return -1;
    *out = v;
    return 0;
}

int ep_src_powermetrics_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_ARG;
    pm_state *st = NULL;
    static const char *const known[] = {"interval_ms", "samplers", "binary", "stop_timeout_ms", NULL};
    const char *unknown = ep_source_unknown_key(keys, n, known);
    if (unknown) {
        snprintf(src->message, sizeof src->message,
                 "powermetrics: unknown parameter '%.60s' (known: interval_ms, samplers, binary)", unknown);
        goto error;
    }
    const char *interval = ep_source_param(keys, values, n, "interval_ms");
    const char *samplers = ep_source_param(keys, values, n, "samplers");
    const char *binary = ep_source_param(keys, values, n, "binary");
    const char *stop_ms = ep_source_param(keys, values, n, "stop_timeout_ms");
    long long interval_ms = 1000, stop_timeout_ms = 2000;
    if (interval && parse_positive_int(interval, 3600 * 1000LL, &interval_ms) < 0) {
        snprintf(src->message, sizeof src->message, "powermetrics: 'interval_ms' must be a positive integer, got '%.40s'",
                 interval);
        goto error;
    }
    if (stop_ms && parse_positive_int(stop_ms, 600 * 1000LL, &stop_timeout_ms) < 0) {
        snprintf(src->message, sizeof src->message,
                 "powermetrics: 'stop_timeout_ms' must be a positive integer, got '%.40s'", stop_ms);
        goto error;
    }
    st = calloc(1, sizeof *st);
    if (!st) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    st->out_fd = st->err_fd = -1;
    st->stop_timeout_ns = stop_timeout_ms * 1000000LL;
    snprintf(st->interval_arg, sizeof st->interval_arg, "%lld", interval_ms);
    /* The spec joins sampler names with '+' (',' separates parameters). */
    const char *names = samplers ? samplers : "cpu_power+gpu_power+thermal";
    size_t len = strlen(names);
    if (len == 0 || len >= sizeof st->samplers) {
        snprintf(src->message, sizeof src->message, "powermetrics: 'samplers' must name 1..255 characters of samplers");
        goto error;
    }
    for (size_t i = 0; i <= len; i++) {
        char c = names[i];
        if (c && !(c == '+' || c == ',' || c == '_' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            snprintf(src->message, sizeof src->message,
                     "powermetrics: 'samplers' must be names joined by '+' (e.g. cpu_power+gpu_power), got '%.60s'",
                     names);
            goto error;
        }
        st->samplers[i] = c == '+' ? ',' : c;
    }
    if (binary) {
        st->binary = strdup(binary);
    } else {
        st->binary = strdup(PM_DEFAULT_BINARY);
        st->use_sudo = geteuid() != 0;
    }
    if (!st->binary) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    if (!is_executable(st->binary)) {
        rc = EP_ERR_NOTFOUND;
        snprintf(src->message, sizeof src->message, "powermetrics: '%.150s' is not an executable file%s",
                 st->binary, binary ? "" : " (powermetrics ships with macOS; elsewhere use binary=PATH)");
        goto error;
    }
    if (st->use_sudo && !is_executable(PM_SUDO)) {
        rc = EP_ERR_PERM;
        snprintf(src->message, sizeof src->message,
                 "powermetrics: needs root and %s is missing: run energyprof as root", PM_SUDO);
        goto error;
    }
    if (st->use_sudo && !is_executable(PM_WRAPPER)) {
        rc = EP_ERR_PERM;
        snprintf(src->message, sizeof src->message,
                 "powermetrics: needs root and %s is not installed: run sudo bash scripts/setup_powermetrics.sh "
                 "(it installs that wrapper and its sudoers rule), or run energyprof as root",
                 PM_WRAPPER);
        goto error;
    }
    snprintf(src->meta_json, sizeof src->meta_json, "{\"source\": \"powermetrics\", \"binary\": \"");
    ep_source_json_escape(src->meta_json, sizeof src->meta_json, st->binary);
    size_t o = strlen(src->meta_json);
    snprintf(src->meta_json + o, sizeof src->meta_json - o,
             "\", \"interval_ms\": %lld, \"samplers\": \"%s\", \"sudo\": %s%s}", interval_ms, st->samplers,
             st->use_sudo ? "true" : "false", st->use_sudo ? ", \"wrapper\": \"" PM_WRAPPER "\"" : "");

    src->kind = "powermetrics";
    src->flags = EP_SRC_PACED;
    /* Poll often enough that a sample's receive time (its t_end) is late by at most
     * 1/20 of the interval, between 5 and 20 ms. */
    int64_t period = interval_ms * 1000000LL / 20;
    src->period_ns = period < 5000000 ? 5000000 : period > 20000000 ? 20000000 : period;
    src->state = st;
    src->start = pm_start;
    src->poll = pm_poll;
    src->stop = pm_stop;
    src->destroy = pm_destroy;
    return EP_OK;
error:
    if (st) {
        free(st->binary);
        free(st);
    }
    return rc;
}
