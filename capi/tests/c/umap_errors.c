/* Bad arguments: UMAP_FAILED or -1 with the right errno, never an abort. Also the
 * getters (the runner sets the UMAP_* variables), prefetch/pin of stray addresses, and
 * that prefetch and fetch_and_pin make pages resident (mincore). */
#include "check.h"
#include <stdint.h>
#include <umap/umap.h>

#define FAILS_WITH(call, err)                        \
    do {                                             \
        errno = 0;                                   \
        CHECK((call) == UMAP_FAILED && errno == (err)); \
    } while (0)

/* Whether the 4 KiB page at `addr` is in memory (mincore). */
static int resident(void *addr) {
    unsigned char vec = 0;
    CHECK(mincore(addr, 4096, &vec) == 0);
    return vec & 1;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    /* The runner sets UMAP_PAGESIZE=8192, UMAP_BUFSIZE=100, UMAP_PAGE_FILLERS=2,
     * UMAP_PAGE_EVICTORS=3, thresholds 80/60, UMAP_MAX_FAULT_EVENTS=32, UMAP_READ_AHEAD=4. */
    CHECK(umapcfg_get_umap_page_size() == 8192);
    CHECK(umapcfg_get_max_pages_in_buffer() == 100);
    CHECK(umapcfg_get_num_fillers() == 2 && umapcfg_get_num_evictors() == 3);
    CHECK(umapcfg_get_evict_high_water_threshold() == 80);
    CHECK(umapcfg_get_evict_low_water_threshold() == 60);
    CHECK(umapcfg_get_max_fault_events() == 32 && umapcfg_get_read_ahead() == 4);
    CHECK(umapcfg_get_system_page_size() == sysconf(_SC_PAGESIZE));
    char path[4096];
    size_t len = 16 * 8192;
    int fd = make_file(path_in(argv[1], "errors.img", path, sizeof path), len);
    int rw = PROT_READ | PROT_WRITE;
    FAILS_WITH(umap(NULL, 0, rw, UMAP_PRIVATE, fd, 0), EINVAL);
    FAILS_WITH(umap(NULL, 4096, rw, UMAP_PRIVATE, fd, 0), EINVAL);        /* not x UMAP_PAGESIZE */
    FAILS_WITH(umap(NULL, len, rw | PROT_EXEC, UMAP_PRIVATE, fd, 0), EINVAL);
    FAILS_WITH(umap(NULL, len, PROT_NONE, UMAP_PRIVATE, fd, 0), EINVAL);
    FAILS_WITH(umap(NULL, len, rw, 0, fd, 0), EINVAL);                    /* no UMAP_PRIVATE */
    FAILS_WITH(umap(NULL, len, rw, MAP_SHARED, fd, 0), EINVAL);
    FAILS_WITH(umap(NULL, len, rw, UMAP_PRIVATE | MAP_POPULATE, fd, 0), EINVAL);
    FAILS_WITH(umap((void *)4096, len, rw, UMAP_PRIVATE | UMAP_FIXED, fd, 0), EINVAL); /* unaligned */
    FAILS_WITH(umap(NULL, len, rw, UMAP_PRIVATE | UMAP_FIXED, fd, 0), EINVAL);
    FAILS_WITH(umap(NULL, len, rw, UMAP_PRIVATE, -1, 0), EBADF);
    FAILS_WITH(umap(NULL, len, rw, UMAP_PRIVATE, 12345, 0), EBADF);
    FAILS_WITH(umap(NULL, 2 * len, rw, UMAP_PRIVATE, fd, 0), EINVAL);     /* past the file's end */
    int dir = open(argv[1], O_RDONLY | O_DIRECTORY);
    CHECK(dir >= 0);
    FAILS_WITH(umap(NULL, len, rw, UMAP_PRIVATE, dir, 0), EINVAL);        /* not a regular file */
    errno = 0;
    CHECK(uunmap((void *)0x12345000, len) == -1 && errno == EINVAL);
    /* Nothing mapped yet: stray prefetch and pin are ignored. */
    struct umap_prefetch_item stray = {(void *)0x1000};
    umap_prefetch(1, &stray);
    umap_prefetch(-3, NULL);
    umap_fetch_and_pin((char *)0x1000, 8192);
    CHECK(pwrite(fd, "data", 4, 0) == 4 && pwrite(fd, "data", 4, (off_t)len - 8192) == 4);
    char *p = umap(NULL, len, rw, UMAP_PRIVATE, fd, 0);
    CHECK(p != UMAP_FAILED);
    CHECK(uunmap(p + 8192, len) == -1 && errno == EINVAL);                /* not a start */
    FAILS_WITH(umap(p + 8192, len, rw, UMAP_PRIVATE | UMAP_FIXED, fd, 0), EINVAL); /* over p */
    FAILS_WITH(umap(p - 8192, 16384, rw, UMAP_PRIVATE | UMAP_FIXED, fd, 0), EINVAL);
    CHECK(!resident(p) && !resident(p + len - 8192));
    umap_fetch_and_pin(p + len - 8192, 1 << 30);                          /* clipped at the end */
    CHECK(resident(p + len - 8192) && resident(p + len - 4096) && !resident(p));
    struct umap_prefetch_item inside = {p + 100};
    umap_prefetch(1, &inside);
    CHECK(resident(p) && resident(p + 4096)); /* the whole 8 KiB UMap page */
    p[0] = 1;
    CHECK(umap_flush() == 0);
    CHECK(uunmap(p, 0) == 0);
    errno = 0;
    CHECK(uunmap(p, 0) == -1 && errno == EINVAL);                         /* twice */
    close(dir);
    close(fd);
    printf("umap_errors: ok\n");
    return 0;
}
