/* udax: a DAX-style memory-mapped view of a file, page faults served in user space
 * (userfaultfd). The C API of libudax; link with -ludax (pkg-config: udax).
 *
 * Every function that can fail returns 0 or a negative errno (udax_addr and udax_len:
 * NULL/0 for a NULL handle), sets errno, and leaves a one-line message (what failed and
 * how to fix it) for udax_strerror on the calling thread. Nothing aborts. */
#ifndef UDAX_H
#define UDAX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* udax_options.flags */
#define UDAX_READ_ONLY     1u  /* PROT_READ: writes through the pointer raise SIGSEGV */
#define UDAX_IN_THREAD     2u  /* serve faults in the faulting thread (SIGBUS handler) */
#define UDAX_ASYNC_DIRTY   4u  /* asynchronous dirty tracking (no budget with it) */
#define UDAX_FIXED_REPLACE 8u  /* with address: replace what is mapped there (MAP_FIXED) */
#define UDAX_HUGE_DIRTY   16u  /* with 2 MiB granularity: dirty tracking per 2 MiB */
#define UDAX_NO_WRITE_AROUND 32u /* with 2 MiB granularity: a fault per page's first write */
#define UDAX_NO_READ_AHEAD  64u /* no read-ahead of sequential read faults (MADV_RANDOM-like) */

struct udax_map;     /* a mapping (opaque) */
struct udax_budget;  /* a resident budget several mappings share (opaque) */

/* How to map. All zero (struct udax_options o = {0};) is the default; NULL too. */
struct udax_options {
    uint64_t len;          /* bytes from the start of the file; 0: all (a multiple of 4096) */
    uint64_t granularity;  /* bytes per read fault: 0 the library's default (2 MiB, but
                              one page under a budget or at an address off a 2 MiB
                              boundary), 4096 one page, 2097152 huge pages, other
                              multiples of 4096: a fault-around window */
    uint64_t budget;       /* resident bytes at most (0: no limit; at least 65536) */
    const struct udax_budget *shared_budget; /* NULL, or a budget shared with other maps */
    void *address;         /* NULL: anywhere; else exactly there (EEXIST if taken,
                              unless UDAX_FIXED_REPLACE) */
    uint32_t handler_threads; /* 0: one per CPU, at most 4 */
    uint32_t flags;        /* UDAX_* above */
};

/* A mapping's counters. */
struct udax_stats {
    uint64_t zero_faults, read_faults, write_faults, mkwrite_faults, zero_to_dirty;
    uint64_t huge_faults, huge_fallbacks, fault_around_pages;
    uint64_t pages_written_back, flushes, evictions, evicted_dirty;
    uint64_t resident_pages, resident_pages_peak;
    uint64_t bytes_read, bytes_written, sigbus_delivered;
};

/* Maps the regular file at path (read-write; read-only with UDAX_READ_ONLY). */
int udax_map_path(const char *path, const struct udax_options *opts, struct udax_map **out);
/* Maps the file open at fd (udax keeps a duplicate: the caller may close fd). An O_DIRECT
 * descriptor is reopened without O_DIRECT. */
int udax_map_fd(int fd, const struct udax_options *opts, struct udax_map **out);
void *udax_addr(const struct udax_map *map);
size_t udax_len(const struct udax_map *map);
/* Writes back every dirty page, then fsync. */
int udax_flush(struct udax_map *map);
/* Makes [offset, offset+len) present as reads (or writes) would. */
int udax_prefault(struct udax_map *map, size_t offset, size_t len, int write);
int udax_stats(const struct udax_map *map, struct udax_stats *out);
/* One counter by name, e.g. "write_around_pages": every counter the library keeps,
 * also those struct udax_stats (a fixed layout) lacks; -ENOENT for an unknown name. */
int udax_stat(const struct udax_map *map, const char *name, uint64_t *out);
/* Flushes, stops and unmaps; frees the handle even when the flush fails. */
int udax_unmap(struct udax_map *map);

int udax_budget_new(uint64_t bytes, struct udax_budget **out);
/* Mappings holding the budget keep it alive. */
void udax_budget_free(struct udax_budget *budget);
uint64_t udax_budget_resident_pages(const struct udax_budget *budget);
uint64_t udax_budget_peak_pages(const struct udax_budget *budget);

/* The message of this thread's last failure if it returned err (negative or positive
 * errno), else strerror's. Valid until this thread's next udax call. */
const char *udax_strerror(int err);
const char *udax_version(void);

#ifdef __cplusplus
}
#endif
#endif /* UDAX_H */
