#!/usr/bin/env bash
# Installs libudax for C and C++ users:
#   PREFIX/lib/libudax.so, libudax.a, libumap.so (-> libudax.so, for UMap programs)
#   PREFIX/include/udax.h, umap/umap.h, umap/store/Store.hpp
#   PREFIX/lib/pkgconfig/udax.pc
# Usage: capi/install.sh [PREFIX]          (default /usr/local; builds in release first)
#        UDAX_LIB_DIR=DIR capi/install.sh PREFIX   (install an already built library from DIR)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${1:-/usr/local}"
if [ -z "${UDAX_LIB_DIR:-}" ]; then
    (cd "$here/.." && cargo build --release -p udax-capi)
    UDAX_LIB_DIR="$(cd "$here/.." && cargo metadata --format-version 1 --no-deps \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)"
install -d "$prefix/lib/pkgconfig" "$prefix/include/umap/store"
install -m 755 "$UDAX_LIB_DIR/libudax_capi.so" "$prefix/lib/libudax.so"
if [ -f "$UDAX_LIB_DIR/libudax_capi.a" ]; then
    install -m 644 "$UDAX_LIB_DIR/libudax_capi.a" "$prefix/lib/libudax.a"
fi
ln -sf libudax.so "$prefix/lib/libumap.so"
install -m 644 "$here/include/udax.h" "$prefix/include/udax.h"
install -m 644 "$here/include/umap/umap.h" "$prefix/include/umap/umap.h"
install -m 644 "$here/include/umap/store/Store.hpp" "$prefix/include/umap/store/Store.hpp"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$here/udax.pc.in" \
    > "$prefix/lib/pkgconfig/udax.pc"
echo "installed libudax $version in $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
