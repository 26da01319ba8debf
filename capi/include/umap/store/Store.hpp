/* UMap 2.1.0's Umap::Store interface, declared so that C++ programs including
 * umap/umap.h compile. libudax does not implement Umap::umap_ex or Store::make_store:
 * programs that back regions with their own Store subclasses do not link. */
#ifndef _UMAP_STORE_HPP_
#define _UMAP_STORE_HPP_
#include <cstddef>
#include <sys/types.h>

namespace Umap {
class Store {
public:
    static Store *make_store(void *region, std::size_t rsize, std::size_t alignsize, int fd);
    virtual ssize_t read_from_store(char *buf, std::size_t nb, off_t off) = 0;
    virtual ssize_t write_to_store(char *buf, std::size_t nb, off_t off) = 0;
};
} // namespace Umap
#endif
