/* Concurrent umap / umap_flush / uunmap from several threads, as UMap's multi_thread
 * test does: each thread maps its own file, writes it, flushes every region, reads its
 * file back with pread, unmaps, and starts again. */
#include "check.h"
#include <pthread.h>
#include <stdint.h>
#include <umap/umap.h>

#define THREADS 4
#define ROUNDS 8
#define PAGES 16

static const char *dir;

static void *worker(void *arg) {
    long id = (long)arg;
    char path[4096], name[64];
    snprintf(name, sizeof name, "thread-%ld.img", id);
    path_in(dir, name, path, sizeof path);
    size_t page = umapcfg_get_umap_page_size();
    size_t len = PAGES * page;
    for (int round = 0; round < ROUNDS; round++) {
        int fd = make_file(path, len);
        unsigned char *p = umap(NULL, len, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
        CHECK(p != UMAP_FAILED);
        unsigned char tag = (unsigned char)(id * 16 + round + 1);
        for (size_t off = len / 2; off < len; off += 512) p[off] = tag;
        CHECK(umap_flush() == 0);
        unsigned char got;
        CHECK(pread(fd, &got, 1, (off_t)(len - 512)) == 1 && got == tag);
        CHECK(pread(fd, &got, 1, 0) == 1 && got == 0);
        CHECK(p[len / 2] == tag && p[0] == 0);
        CHECK(uunmap(p, 0) == 0);
        CHECK(pread(fd, &got, 1, (off_t)(len / 2)) == 1 && got == tag);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    dir = argv[1];
    CHECK(umap_has_write_support() == 1);
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++) CHECK(pthread_create(&threads[i], NULL, worker, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(threads[i], NULL) == 0);
    printf("umap_threads: %d threads x %d rounds ok\n", THREADS, ROUNDS);
    return 0;
}
