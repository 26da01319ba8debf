/* UMAP_FIXED regions back to back in a range the program reserved, as umapsort -N k:
 * each region lands exactly where asked, the neighbours do not mix, and each file gets
 * its own words. */
#include "check.h"
#include <stdint.h>
#include <umap/umap.h>

#define REGIONS 4

int main(int argc, char **argv) {
    CHECK(argc == 2);
    size_t len = 64 * umapcfg_get_umap_page_size();
    char *base = mmap(NULL, REGIONS * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(base != MAP_FAILED);
    int fds[REGIONS];
    char *regions[REGIONS];
    for (int i = 0; i < REGIONS; i++) {
        char path[4096], name[32];
        snprintf(name, sizeof name, "fixed-%d.img", i);
        fds[i] = make_file(path_in(argv[1], name, path, sizeof path), len);
        regions[i] = umap(base + i * len, len, PROT_READ | PROT_WRITE, UMAP_PRIVATE | UMAP_FIXED,
                          fds[i], 0);
        CHECK(regions[i] == base + i * len);
    }
    for (int i = 0; i < REGIONS; i++) memset(regions[i], 'a' + i, len);
    for (int i = 0; i < REGIONS; i++) {
        CHECK(regions[i][0] == 'a' + i && regions[i][len - 1] == 'a' + i);
    }
    /* A prefetch of the page at each boundary reads the right region's page. */
    struct umap_prefetch_item items[REGIONS];
    for (int i = 0; i < REGIONS; i++) items[i].page_base_addr = base + i * len;
    umap_prefetch(REGIONS, items);
    for (int i = 0; i < REGIONS; i++) CHECK(uunmap(regions[i], len) == 0);
    for (int i = 0; i < REGIONS; i++) {
        char first, last;
        CHECK(pread(fds[i], &first, 1, 0) == 1 && pread(fds[i], &last, 1, (off_t)len - 1) == 1);
        CHECK(first == 'a' + i && last == 'a' + i);
        close(fds[i]);
    }
    printf("umap_fixed: %d regions back to back ok\n", REGIONS);
    return 0;
}
