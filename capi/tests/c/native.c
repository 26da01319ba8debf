/* udax's own C API: map by path and by fd, write, flush, stats, prefault, shared
 * budget, read-only, fixed address, and the errors (negative errno + message). */
#include "check.h"
#include <stdint.h>
#include <sys/mman.h>
#include <udax.h>

int main(int argc, char **argv) {
    CHECK(argc == 2);
    char path[4096], missing[4096];
    path_in(argv[1], "native.img", path, sizeof path);
    path_in(argv[1], "nothing.img", missing, sizeof missing);
    const size_t size = 4 << 20;
    int fd = make_file(path, size);
    CHECK(strlen(udax_version()) > 0);

    /* By path, defaults. */
    struct udax_map *map = NULL;
    CHECK(udax_map_path(path, NULL, &map) == 0 && map != NULL);
    CHECK(udax_len(map) == size);
    unsigned char *p = udax_addr(map);
    CHECK(p != NULL);
    CHECK(p[12345] == 0); /* a hole: zero page */
    memcpy(p + 8192, "hello", 5);
    struct udax_stats st;
    CHECK(udax_stats(map, &st) == 0);
    /* one fault each: the hole read (the 2 MiB around it at the default granularity), then
       the write, on that zero page (zero_to_dirty) or, at 4 KiB, on an empty one */
    CHECK(st.zero_faults == 1 && st.write_faults + st.zero_to_dirty == 1);
    uint64_t around = 0, skipped = 0, n = 0;
    CHECK(udax_stat(map, "write_faults", &n) == 0 && n == st.write_faults);
    CHECK(udax_stat(map, "write_around_pages", &around) == 0 && around == 511);
    CHECK(udax_flush(map) == 0);
    CHECK(udax_stats(map, &st) == 0 && st.pages_written_back == 1 && st.flushes == 1);
    /* the 511 pages the write made writable around its own are still zero: not written */
    CHECK(udax_stat(map, "unwritten_skipped", &skipped) == 0 && skipped == 511);
    CHECK(udax_stat(map, "no_such_counter", &n) == -ENOENT);
    CHECK(strstr(udax_strerror(-ENOENT), "no_such_counter") != NULL);
    CHECK(udax_stat(map, NULL, &n) == -EINVAL && udax_stat(map, "flushes", NULL) == -EINVAL);
    char back[5];
    CHECK(pread(fd, back, 5, 8192) == 5 && memcmp(back, "hello", 5) == 0);
    CHECK(udax_prefault(map, 0, 65536, 0) == 0);
    CHECK(udax_prefault(map, size, 1, 0) == -EINVAL); /* out of range */
    CHECK(udax_unmap(map) == 0);

    /* Without write-around, a write to a range read as zero pages is a fault of its page
       (zero_to_dirty); with it (the default above), one write fault for the range. */
    struct udax_options exact = {0};
    exact.flags = UDAX_NO_WRITE_AROUND;
    CHECK(udax_map_path(path, &exact, &map) == 0);
    p = udax_addr(map);
    CHECK(p[(2 << 20) + 12345] == 0); /* the second 2 MiB range: a hole */
    p[(2 << 20) + 4096] = 7;
    CHECK(udax_stats(map, &st) == 0);
    CHECK(st.zero_faults == 1 && st.zero_to_dirty == 1 && st.write_faults == 0);
    CHECK(udax_unmap(map) == 0);

    /* At 4 KiB without read-ahead, a sequential read is one fault a page (with it, the
       rest of the range would come in ahead of the faults). */
    struct udax_options pages = {0};
    pages.granularity = 4096;
    pages.flags = UDAX_NO_READ_AHEAD;
    CHECK(udax_map_path(path, &pages, &map) == 0);
    p = udax_addr(map);
    for (size_t page = 0; page < 8; page++) {
        CHECK(p[page * 4096 + 1] == (page == 2 ? 'e' : 0)); /* "hello" at 8192 */
    }
    uint64_t ahead = 1;
    CHECK(udax_stats(map, &st) == 0 && st.zero_faults + st.read_faults == 8);
    CHECK(udax_stat(map, "read_ahead_ranges", &ahead) == 0 && ahead == 0);
    CHECK(udax_unmap(map) == 0);

    /* By fd, with a shared budget over two mappings and fault-around. */
    struct udax_budget *budget = NULL;
    CHECK(udax_budget_new(1 << 20, &budget) == 0);
    struct udax_options o = {0};
    o.shared_budget = budget;
    o.granularity = 65536;
    struct udax_map *a = NULL, *b = NULL;
    CHECK(udax_map_fd(fd, &o, &a) == 0);
    CHECK(udax_map_fd(fd, &o, &b) == 0);
    for (size_t off = 0; off < size; off += 4096) {
        ((unsigned char *)udax_addr(a))[off + 4095] = 1;
    }
    for (size_t off = 0; off < size; off += 4096) {
        CHECK(((unsigned char *)udax_addr(b))[off + 4095] <= 1);
    }
    struct udax_stats sa, sb;
    CHECK(udax_stats(a, &sa) == 0 && udax_stats(b, &sb) == 0);
    CHECK(sa.evicted_dirty > 0);
    CHECK(sa.resident_pages + sb.resident_pages <= 256 + 2 * 16 + 2 * 4);
    CHECK(udax_budget_peak_pages(budget) <= 256 + 2 * 16 + 2 * 4);
    CHECK(udax_budget_resident_pages(budget) <= 256 + 2 * 16 + 2 * 4); /* eviction may still run */
    udax_budget_free(budget); /* the mappings keep it */
    CHECK(udax_unmap(a) == 0 && udax_unmap(b) == 0);

    /* Read-only, at a fixed address. */
    void *hole = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(hole != MAP_FAILED);
    struct udax_options ro = {0};
    ro.flags = UDAX_READ_ONLY | UDAX_FIXED_REPLACE;
    ro.address = hole;
    CHECK(udax_map_path(path, &ro, &map) == 0);
    CHECK(udax_addr(map) == hole);
    CHECK(memcmp((char *)udax_addr(map) + 8192, "hello", 5) == 0);
    CHECK(udax_prefault(map, 0, 4096, 1) == -EACCES);
    CHECK(udax_unmap(map) == 0);

    /* Errors: negative errno, errno set, a message naming the cause. */
    CHECK(udax_map_path(missing, NULL, &map) == -ENOENT && errno == ENOENT);
    CHECK(strstr(udax_strerror(-ENOENT), "nothing.img") != NULL);
    CHECK(udax_map_path(NULL, NULL, &map) == -EINVAL);
    CHECK(udax_map_path(path, NULL, NULL) == -EINVAL);
    CHECK(udax_map_fd(-1, NULL, &map) == -EBADF);
    CHECK(strstr(udax_strerror(-EBADF), "fd -1") != NULL);
    struct udax_options bad = {0};
    bad.flags = 1u << 30;
    CHECK(udax_map_path(path, &bad, &map) == -EINVAL);
    bad.flags = 0;
    bad.granularity = 1000;
    CHECK(udax_map_path(path, &bad, &map) == -EINVAL);
    bad.granularity = 0;
    bad.len = size * 2; /* longer than the file */
    CHECK(udax_map_path(path, &bad, &map) == -EINVAL);
    bad.len = 0;
    bad.budget = 4096; /* under the 64 KiB minimum */
    CHECK(udax_map_path(path, &bad, &map) == -EINVAL);
    CHECK(strstr(udax_strerror(-EINVAL), "too small") != NULL);
    CHECK(udax_budget_new(1, &budget) == -EINVAL);
    CHECK(udax_flush(NULL) == -EINVAL && udax_unmap(NULL) == -EINVAL);
    CHECK(udax_stat(NULL, "flushes", &(uint64_t){0}) == -EINVAL);
    CHECK(udax_stats(NULL, &st) == -EINVAL && udax_addr(NULL) == NULL && udax_len(NULL) == 0);
    CHECK(udax_budget_resident_pages(NULL) == 0 && udax_budget_peak_pages(NULL) == 0);
    CHECK(strlen(udax_strerror(-ENOSPC)) > 0); /* no failure of that errno: strerror's */
    close(fd);
    printf("native: ok\n");
    return 0;
}
