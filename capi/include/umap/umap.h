/* UMap-compatible API of libudax, after LLNL UMap 2.1.0's umap/umap.h: programs written
 * for UMap build against this header and link with -lumap (or -ludax) unchanged.
 * Differences from UMap: every failure returns UMAP_FAILED / -1 with errno (UMap aborts);
 * see udax's capi/README.md. */
#ifndef _UMAP_H_
#define _UMAP_H_

#ifdef __cplusplus
  #include <cstdint>
  #include <cstddef>
  #include <mutex>          /* UMap's header pulls this in; programs may rely on it */
  #include "umap/store/Store.hpp"
#else
  #include <stddef.h>
  #include <stdint.h>
#endif
#include <sys/types.h>
#include <unistd.h>
#include <sys/mman.h>

#ifdef __cplusplus
extern "C" {
#endif

void *umap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
int uunmap(void *addr, size_t length);
int umap_flush();       /* () as in UMap's header */

struct umap_prefetch_item {
    void *page_base_addr;
};

int umap_has_write_support();
void umap_prefetch(int npages, struct umap_prefetch_item *page_array);
void umap_fetch_and_pin(char *paddr, uint64_t size);

uint64_t umapcfg_get_umap_page_size(void);
uint64_t umapcfg_get_max_fault_events(void);
uint64_t umapcfg_get_num_fillers(void);
uint64_t umapcfg_get_num_evictors(void);
uint64_t umapcfg_get_max_pages_in_buffer(void);
uint64_t umapcfg_get_read_ahead(void);
int umapcfg_get_evict_low_water_threshold(void);
int umapcfg_get_evict_high_water_threshold(void);
long umapcfg_get_system_page_size(void);

#ifdef __cplusplus
}
#endif

#define UMAP_PRIVATE MAP_PRIVATE
#define UMAP_FIXED   MAP_FIXED
#define UMAP_FAILED  ((void *)-1)

#endif /* _UMAP_H_ */
