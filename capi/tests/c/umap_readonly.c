/* A PROT_READ region over a read-only O_DIRECT descriptor: reads see the file, a write
 * raises SIGSEGV with SEGV_ACCERR (caught here and jumped out of), flush and uunmap work
 * and leave the file unchanged. */
#include "check.h"
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <umap/umap.h>

static sigjmp_buf back;
static volatile sig_atomic_t code;

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    (void)sig, (void)ctx;
    code = info->si_code;
    siglongjmp(back, 1);
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    char path[4096];
    path_in(argv[1], "readonly.img", path, sizeof path);
    size_t len = 32 * umapcfg_get_umap_page_size();
    int wfd = make_file(path, len);
    CHECK(pwrite(wfd, "udax", 4, 4096) == 4);
    close(wfd);
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0 && errno == EINVAL) fd = open(path, O_RDONLY); /* tmpfs before 6.6 */
    CHECK(fd >= 0);
    char *p = umap(NULL, len, PROT_READ, UMAP_PRIVATE, fd, 0);
    CHECK(p != UMAP_FAILED);
    CHECK(memcmp(p + 4096, "udax", 4) == 0 && p[0] == 0);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
    if (sigsetjmp(back, 1) == 0) {
        ((volatile char *)p)[4096] = 'X';
        CHECK(!"the write to a read-only region succeeded");
    }
    CHECK(code == SEGV_ACCERR);
    signal(SIGSEGV, SIG_DFL);
    CHECK(umap_flush() == 0);
    CHECK(uunmap(p, len) == 0);
    close(fd);
    char got[4];
    fd = open(path, O_RDONLY); /* not O_DIRECT: an unaligned buffer */
    CHECK(fd >= 0 && pread(fd, got, 4, 4096) == 4 && memcmp(got, "udax", 4) == 0);
    close(fd);
    printf("umap_readonly: reads ok, write refused with SEGV_ACCERR\n");
    return 0;
}
