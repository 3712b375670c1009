/* LD_PRELOAD shim for tests/e2e/test_crash.py: records when the relay's data reaches the disk.
 *
 * Wraps fsync, fdatasync, sync_file_range and msync. After each real call returns it appends one
 * line to $FSYNC_TRACE:  <name> <CLOCK_MONOTONIC start ns> <end ns> <result> <path of the fd>
 * (one write(2) on an O_APPEND file, so lines from the relay's threads never interleave).
 * CLOCK_MONOTONIC is what Python's time.monotonic() reads on Linux, so the test compares these
 * times with its own.
 *
 * With FSYNC_SHIM_NOOP=1 the calls return 0 at once and record nothing: the relay then behaves
 * as if its spool ran with PRAGMA synchronous=OFF, which the test's checker must catch.
 * With FSYNC_SHIM_HANG=<file>, fsync and fdatasync block forever, unrecorded, while that file
 * exists: a disk that never confirms the write (the relay must not answer 200 meanwhile).
 * Built by the test with the system `cc`; nothing of it is part of the relay.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int trace_fd = -1;
static int noop = 0;
static const char *hang_flag = NULL;

static void maybe_hang(void) {
    if (hang_flag != NULL && access(hang_flag, F_OK) == 0)
        for (;;)
            pause();
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((constructor)) static void shim_init(void) {
    const char *path = getenv("FSYNC_TRACE");
    const char *flag = getenv("FSYNC_SHIM_NOOP");
    noop = flag != NULL && strcmp(flag, "1") == 0;
    hang_flag = getenv("FSYNC_SHIM_HANG");
    if (path == NULL || *path == '\0')
        return;
    trace_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (trace_fd >= 0) {
        char line[128];
        int n = snprintf(line, sizeof line, "loaded %d %s\n", (int)getpid(), noop ? "noop" : "real");
        if (n > 0 && write(trace_fd, line, (size_t)n) < 0) { /* nothing to do about it */ }
    }
}

static void record(const char *name, int fd, long long start, long long end, int result) {
    if (trace_fd < 0)
        return;
    char target[512] = "?";
    if (fd >= 0) {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, target, sizeof target - 1);
        target[len > 0 ? len : 0] = '\0';
    }
    char line[700];
    int n = snprintf(line, sizeof line, "%s %lld %lld %d %s\n", name, start, end, result, target);
    if (n > 0) {
        if ((size_t)n >= sizeof line)
            n = sizeof line - 1;
        if (write(trace_fd, line, (size_t)n) < 0) { /* nothing to do about it */ }
    }
}

#define REAL(fn) ((__typeof__(&fn))dlsym(RTLD_NEXT, #fn))

int fsync(int fd) {
    if (noop)
        return 0;
    maybe_hang();
    int saved, result;
    long long start = now_ns();
    result = REAL(fsync)(fd);
    saved = errno;
    record("fsync", fd, start, now_ns(), result);
    errno = saved;
    return result;
}

int fdatasync(int fd) {
    if (noop)
        return 0;
    maybe_hang();
    int saved, result;
    long long start = now_ns();
    result = REAL(fdatasync)(fd);
    saved = errno;
    record("fdatasync", fd, start, now_ns(), result);
    errno = saved;
    return result;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    if (noop)
        return 0;
    int saved, result;
    long long start = now_ns();
    result = REAL(sync_file_range)(fd, offset, nbytes, flags);
    saved = errno;
    record("sync_file_range", fd, start, now_ns(), result);
    errno = saved;
    return result;
}

int msync(void *addr, size_t length, int flags) {
    if (noop)
        return 0;
    int saved, result;
    long long start = now_ns();
    result = REAL(msync)(addr, length, flags);
    saved = errno;
    record("msync", -1, start, now_ns(), result);
    errno = saved;
    return result;
}
