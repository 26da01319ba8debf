// Both headers compile as C++ (UMap's own programs are C++) and link against libudax.
#include <umap/umap.h>
#include <udax.h>
#include <cstdio>
#include <cerrno>
#include <cstring>

int main() {
    std::mutex m; // umap.h brings <mutex> in, as UMap's does
    std::lock_guard<std::mutex> lock(m);
    udax_options options{};
    options.flags = UDAX_READ_ONLY;
    udax_map *map = nullptr;
    int err = udax_map_path("/nonexistent/udax", &options, &map);
    if (err != -ENOENT || std::strlen(udax_strerror(err)) == 0) return 1;
    if (umap(nullptr, 0, PROT_READ, UMAP_PRIVATE, -1, 0) != UMAP_FAILED) return 1;
    Umap::Store *store = nullptr; // the class is declared
    (void)store;
    std::printf("headers: C++ ok (udax %s, UMap page %llu)\n", udax_version(),
                (unsigned long long)umapcfg_get_umap_page_size());
    return 0;
}
