/* clockshift: an LD_PRELOAD library that steps the wall clock of the processes it is loaded
 * into, and nothing else -- what an NTP step or `date -s` does to a process, without touching
 * the host's clock.
 *
 * CLOCK_REALTIME (and its _COARSE variant), gettimeofday() and time() return the real time
 * plus an offset; CLOCK_MONOTONIC, CLOCK_BOOTTIME and every sleep or timeout stay real. The
 * offset is a signed 64-bit count of nanoseconds in the first 8 bytes of the file named by
 * CLOCKSHIFT_FILE, mapped shared, so a test that rewrites those bytes in place steps the clock
 * of every process of the tree at once (forked children share the mapping). Without the
 * variable, or with an unreadable file, the clock is left alone.
 *
 * Only calls that go through the dynamic symbol are shifted; glibc's internal uses (e.g. the
 * deadline of a CLOCK_REALTIME timed wait) see the real time. CPython 3.11 reads the wall
 * clock through clock_gettime(CLOCK_REALTIME) and times its sleeps and lock timeouts on
 * CLOCK_MONOTONIC, so for it this is the same as a real step (tests/test_clockshift.py
 * checks both). Test-only: built by tests/clockshift.py, never shipped.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static volatile const int64_t *offset_ns;

static void load(void) {
    real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    const char *path = getenv("CLOCKSHIFT_FILE");
    if (path == NULL)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    void *map = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map != MAP_FAILED)
        offset_ns = map;
}

__attribute__((constructor)) static void init(void) {
    if (real_clock_gettime == NULL)
        load();
}

static void shift(struct timespec *ts) {
    if (offset_ns == NULL)
        return;
    int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec + *offset_ns;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (real_clock_gettime == NULL)
        load();
    int rc = real_clock_gettime(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE))
        shift(ts);
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz; /* obsolete; glibc fills nothing useful either */
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) { /* tv is declared nonnull */
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out != NULL)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
