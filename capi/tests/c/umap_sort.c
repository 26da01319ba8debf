/* A sort in place under a small UMAP_BUFSIZE (the runner sets it), as UMap's umapsort:
 * fill a file with pseudo-random 64-bit words through the region, qsort them through it,
 * umap_flush and uunmap, then check with pread that the file is sorted and holds the
 * same words (sum and xor). Prints the time of the sort and flush. */
#include "check.h"
#include <stdint.h>
#include <time.h>
#include <umap/umap.h>

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    CHECK(argc == 2 || argc == 3);
    size_t mib = argc == 3 ? (size_t)atol(argv[2]) : 32;
    char path[4096];
    path_in(argv[1], "sort.img", path, sizeof path);
    size_t len = mib << 20, words = len / 8;
    int fd = make_file(path, len);
    uint64_t *w = umap(NULL, len, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
    CHECK(w != UMAP_FAILED);
    uint64_t x = 88172645463325252ull, sum = 0, xr = 0;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        w[i] = x;
        sum += x, xr ^= x;
    }
    double start = now();
    qsort(w, words, sizeof *w, compare);
    CHECK(umap_flush() == 0);
    double sorted = now() - start;
    CHECK(uunmap(w, len) == 0);
    uint64_t buf[4096], prev = 0, sum2 = 0, xr2 = 0;
    for (size_t off = 0; off < len; off += sizeof buf) {
        CHECK(pread(fd, buf, sizeof buf, (off_t)off) == (ssize_t)sizeof buf);
        for (size_t i = 0; i < 4096; i++) {
            CHECK(buf[i] >= prev);
            prev = buf[i];
            sum2 += buf[i], xr2 ^= buf[i];
        }
    }
    CHECK(sum == sum2 && xr == xr2);
    printf("umap_sort: %zu MiB under UMAP_BUFSIZE=%llu pages of %llu bytes: sort+flush %.3f s\n",
           mib, (unsigned long long)umapcfg_get_max_pages_in_buffer(),
           (unsigned long long)umapcfg_get_umap_page_size(), sorted);
    close(fd);
    return 0;
}
