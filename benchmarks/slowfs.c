/* slowfs.c: an LD_PRELOAD shim that makes metadata operations on files under one folder slower,
 * as on a busy Lustre, where every open and stat of a file is a round trip to the metadata server.
 *
 *   gcc -O2 -shared -fPIC -o slowfs.so slowfs.c -ldl     (benchmarks/slowfs.py does this, cached)
 *   SLOWFS_PREFIX=/dev/shm/x SLOWFS_DELAY_NS=500000 SLOWFS_COUNTS=/tmp/counts LD_PRELOAD=./slowfs.so cmd
 *
 * Delayed (one nanosleep of SLOWFS_DELAY_NS, default 0.5 ms, before the call) when the path resolves
 * under SLOWFS_PREFIX:
 *   open   open open64 __open_2 __open64_2 openat openat64 __openat_2 __openat64_2
 *   stat   stat stat64 lstat lstat64 fstatat fstatat64 statx __xstat __xstat64 __lxstat __lxstat64
 *          __fxstatat __fxstatat64 (newfstatat is the syscall behind fstatat, not a libc symbol)
 *   fstat  fstat fstat64 __fxstat __fxstat64, and the *at calls above given AT_EMPTY_PATH: when the
 *          descriptor is one of a file under the prefix (on Lustre a file's fstat is a round trip too)
 *   opendir opendir (glibc opens the folder inside, past this shim)
 * A path resolves under the prefix when it (relative ones joined to the working directory, or to the
 * folder a dirfd names, read from /proc/self/fd) is the prefix or starts with prefix + "/"; no "..",
 * no symbolic links are resolved. A descriptor's path is read from /proc/self/fd. Calls glibc makes
 * inside itself (opendir's open, stat64's fstatat) do not pass through here, so nothing counts twice.
 *
 * The process's timer slack is set to 1 ns when a delay is given, so a sleep ends on time (the default
 * slack lets it end up to 50 us late); the counters below give the mean delay actually slept.
 *
 * Counters: with SLOWFS_COUNTS set, every process that loads the shim (forked DataLoader workers
 * inherit it; exec'd children load it again from LD_PRELOAD) adds into one shared memory map of that
 * file: per kind the calls seen and the calls under the prefix (delayed, or only counted when
 * SLOWFS_DELAY_NS=0), the nanoseconds slept, so a benchmark can check
 * that the shim fired and report delayed operations per image. Layout: uint64 seen[4], delayed[4],
 * slept_ns; kinds in the order open, stat, fstat, opendir.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum kind { K_OPEN, K_STAT, K_FSTAT, K_OPENDIR, KINDS };

struct counters {
    uint64_t seen[KINDS];
    uint64_t delayed[KINDS];
    uint64_t slept_ns;
};

static const char *prefix;
static size_t prefix_len;
static long delay_ns = 500000;
static struct counters local_counters;
static struct counters *counters = &local_counters;

__attribute__((constructor)) static void slowfs_init(void) {
    const char *p = getenv("SLOWFS_PREFIX");
    if (p && *p) {
        prefix = p;
        prefix_len = strlen(p);
        while (prefix_len > 1 && prefix[prefix_len - 1] == '/') prefix_len--;
    }
    const char *d = getenv("SLOWFS_DELAY_NS");
    if (d && *d) delay_ns = atol(d);
    if (prefix && delay_ns > 0) prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* sleeps end on time, not up to 50 us late */
    const char *c = getenv("SLOWFS_COUNTS");
    if (c && *c) { /* the raw syscall: this shim's own open would count itself */
        int fd = (int)syscall(SYS_openat, AT_FDCWD, c, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (ftruncate(fd, sizeof(struct counters)) == 0) {
                void *map = mmap(NULL, sizeof(struct counters), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (map != MAP_FAILED) counters = map;
            }
            close(fd);
        }
    }
}

static int under_prefix(const char *path) {
    return strncmp(path, prefix, prefix_len) == 0 && (path[prefix_len] == '\0' || path[prefix_len] == '/');
}

/* The folder or file a descriptor names ("" when unknown), read from /proc/self/fd. */
static int fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0) return 0;
    out[n] = '\0';
    return 1;
}

static int fd_under_prefix(int fd) {
    char path[PATH_MAX];
    return prefix && fd >= 0 && fd_path(fd, path, sizeof path) && under_prefix(path);
}

/* Whether `path`, relative to `dirfd` (AT_FDCWD: the working directory), lies under the prefix. */
static int at_under_prefix(int dirfd, const char *path) {
    if (!prefix || !path) return 0;
    if (path[0] == '/') return under_prefix(path);
    char base[PATH_MAX], full[2 * PATH_MAX + 2];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else if (!fd_path(dirfd, base, sizeof base)) {
        return 0;
    }
    if (!*path) return under_prefix(base);
    snprintf(full, sizeof full, "%s/%s", base, path);
    return under_prefix(full);
}

static void maybe_delay(enum kind k, int matched) {
    __atomic_fetch_add(&counters->seen[k], 1, __ATOMIC_RELAXED);
    if (!matched) return;
    __atomic_fetch_add(&counters->delayed[k], 1, __ATOMIC_RELAXED);
    if (delay_ns <= 0) return; /* counted only */
    int saved = errno;
    struct timespec t0, t1, left = {delay_ns / 1000000000L, delay_ns % 1000000000L};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    __atomic_fetch_add(&counters->slept_ns, (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000L + t1.tv_nsec - t0.tv_nsec),
                       __ATOMIC_RELAXED);
    errno = saved;
}

#define REAL(name) \
    static __typeof__(&name) real_##name; \
    if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

/* ---------------------------------------------------------------- open */

#define OPEN_LIKE(name)                                      \
    int name(const char *path, int flags, ...) {             \
        va_list ap;                                          \
        va_start(ap, flags);                                 \
        mode_t mode = mode_arg(flags, ap);                   \
        va_end(ap);                                          \
        REAL(name);                                          \
        maybe_delay(K_OPEN, at_under_prefix(AT_FDCWD, path)); \
        return real_##name(path, flags, mode);               \
    }
OPEN_LIKE(open)
OPEN_LIKE(open64)

#define OPENAT_LIKE(name)                                   \
    int name(int dirfd, const char *path, int flags, ...) { \
        va_list ap;                                         \
        va_start(ap, flags);                                \
        mode_t mode = mode_arg(flags, ap);                  \
        va_end(ap);                                         \
        REAL(name);                                         \
        maybe_delay(K_OPEN, at_under_prefix(dirfd, path));  \
        return real_##name(dirfd, path, flags, mode);       \
    }
OPENAT_LIKE(openat)
OPENAT_LIKE(openat64)

int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

#define OPEN2_LIKE(name)                                      \
    int name(const char *path, int flags) {                   \
        REAL(name);                                           \
        maybe_delay(K_OPEN, at_under_prefix(AT_FDCWD, path)); \
        return real_##name(path, flags);                      \
    }
OPEN2_LIKE(__open_2)
OPEN2_LIKE(__open64_2)

#define OPENAT2_LIKE(name)                                 \
    int name(int dirfd, const char *path, int flags) {     \
        REAL(name);                                        \
        maybe_delay(K_OPEN, at_under_prefix(dirfd, path)); \
        return real_##name(dirfd, path, flags);            \
    }
OPENAT2_LIKE(__openat_2)
OPENAT2_LIKE(__openat64_2)

/* ---------------------------------------------------------------- stat by path */

#define STAT_LIKE(name, buftype)                              \
    int name(const char *path, buftype *buf) {                \
        REAL(name);                                           \
        maybe_delay(K_STAT, at_under_prefix(AT_FDCWD, path)); \
        return real_##name(path, buf);                        \
    }
STAT_LIKE(stat, struct stat)
STAT_LIKE(stat64, struct stat64)
STAT_LIKE(lstat, struct stat)
STAT_LIKE(lstat64, struct stat64)

/* an *at call with AT_EMPTY_PATH and "" is an fstat of dirfd */
static void delay_at(int dirfd, const char *path, int flags) {
    if ((flags & AT_EMPTY_PATH) && path && !*path)
        maybe_delay(K_FSTAT, fd_under_prefix(dirfd));
    else
        maybe_delay(K_STAT, at_under_prefix(dirfd, path));
}

#define FSTATAT_LIKE(name, buftype)                                   \
    int name(int dirfd, const char *path, buftype *buf, int flags) { \
        REAL(name);                                                   \
        delay_at(dirfd, path, flags);                                 \
        return real_##name(dirfd, path, buf, flags);                  \
    }
FSTATAT_LIKE(fstatat, struct stat)
FSTATAT_LIKE(fstatat64, struct stat64)

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    REAL(statx);
    delay_at(dirfd, path, flags);
    return real_statx(dirfd, path, flags, mask, buf);
}

/* the pre-2.33 entry points, still exported (binaries built against an older glibc call them) */
int __xstat(int ver, const char *path, struct stat *buf);
int __xstat64(int ver, const char *path, struct stat64 *buf);
int __lxstat(int ver, const char *path, struct stat *buf);
int __lxstat64(int ver, const char *path, struct stat64 *buf);
int __fxstat(int ver, int fd, struct stat *buf);
int __fxstat64(int ver, int fd, struct stat64 *buf);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags);

#define XSTAT_LIKE(name, buftype)                             \
    int name(int ver, const char *path, buftype *buf) {       \
        REAL(name);                                           \
        maybe_delay(K_STAT, at_under_prefix(AT_FDCWD, path)); \
        return real_##name(ver, path, buf);                   \
    }
XSTAT_LIKE(__xstat, struct stat)
XSTAT_LIKE(__xstat64, struct stat64)
XSTAT_LIKE(__lxstat, struct stat)
XSTAT_LIKE(__lxstat64, struct stat64)

#define FXSTATAT_LIKE(name, buftype)                                           \
    int name(int ver, int dirfd, const char *path, buftype *buf, int flags) { \
        REAL(name);                                                            \
        delay_at(dirfd, path, flags);                                          \
        return real_##name(ver, dirfd, path, buf, flags);                      \
    }
FXSTATAT_LIKE(__fxstatat, struct stat)
FXSTATAT_LIKE(__fxstatat64, struct stat64)

/* ---------------------------------------------------------------- fstat of a descriptor */

#define FSTAT_LIKE(name, buftype)                      \
    int name(int fd, buftype *buf) {                   \
        REAL(name);                                    \
        maybe_delay(K_FSTAT, fd_under_prefix(fd));     \
        return real_##name(fd, buf);                   \
    }
FSTAT_LIKE(fstat, struct stat)
FSTAT_LIKE(fstat64, struct stat64)

#define FXSTAT_LIKE(name, buftype)                 \
    int name(int ver, int fd, buftype *buf) {      \
        REAL(name);                                \
        maybe_delay(K_FSTAT, fd_under_prefix(fd)); \
        return real_##name(ver, fd, buf);          \
    }
FXSTAT_LIKE(__fxstat, struct stat)
FXSTAT_LIKE(__fxstat64, struct stat64)

/* ---------------------------------------------------------------- directories */

DIR *opendir(const char *path) {
    REAL(opendir);
    maybe_delay(K_OPENDIR, at_under_prefix(AT_FDCWD, path));
    return real_opendir(path);
}
