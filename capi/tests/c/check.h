/* Helpers of the C test programs: CHECK fails the program with the line and errno. */
#ifndef CHECK_H
#define CHECK_H
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: CHECK(%s) failed (errno %d: %s)\n", __FILE__,   \
                    __LINE__, #cond, errno, strerror(errno));                       \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

/* A file of `size` bytes at `path` (made with ftruncate: all hole), opened read-write. */
static inline int make_file(const char *path, size_t size) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, (off_t)size) == 0);
    return fd;
}

/* A path in the directory the test runner gives (argv[1]). */
static inline const char *path_in(const char *dir, const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", dir, name);
    return buf;
}
#endif
