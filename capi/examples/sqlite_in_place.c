/* SQLite in place through a udax mapping: the database file is mapped with udax and
 * handed to SQLite with sqlite3_deserialize(flags 0): SQLite reads and writes the mapped
 * bytes as its database (no copy, no VFS file I/O), a query and an update run, and one
 * udax_flush writes back exactly the pages the update touched.
 *
 *   cc -O2 -I capi/include capi/examples/sqlite_in_place.c -ludax -lsqlite3 -o sqlite_in_place
 *   ./sqlite_in_place DIR [ROWS]
 *
 * Creates DIR/in-place.db (ROWS rows, default 20000) with plain SQLite first, then maps
 * it. Prints the faults, the pages written back, and integrity_check of a fresh
 * connection opened on the file afterwards; exits 1 if pages written back differ from
 * first-write faults or the check is not "ok". */
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <udax.h>

#define TRY(call)                                                                   \
    do {                                                                            \
        int rc_ = (call);                                                           \
        if (rc_ != SQLITE_OK && rc_ != SQLITE_DONE && rc_ != SQLITE_ROW) {          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,           \
                    sqlite3_errstr(rc_));                                           \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

/* The first column of the first row of `sql` as an integer (or its text into `text`). */
static int64_t query(sqlite3 *db, const char *sql, char *text, size_t text_len) {
    sqlite3_stmt *stmt;
    TRY(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL));
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) {
        fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
        exit(1);
    }
    int64_t value = sqlite3_column_int64(stmt, 0);
    if (text) snprintf(text, text_len, "%s", (const char *)sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    return value;
}

/* Makes the database with plain SQLite: ROWS rows of (id, value, padding). */
static void create(const char *path, int rows) {
    remove(path);
    sqlite3 *db;
    TRY(sqlite3_open(path, &db));
    TRY(sqlite3_exec(db,
                     "PRAGMA page_size=4096; PRAGMA journal_mode=DELETE;"
                     "CREATE TABLE t(id INTEGER PRIMARY KEY, value INTEGER, pad TEXT);"
                     "BEGIN;",
                     NULL, NULL, NULL));
    sqlite3_stmt *insert;
    TRY(sqlite3_prepare_v2(db, "INSERT INTO t VALUES(?, ?, printf('%.100c', 'x'))", -1,
                           &insert, NULL));
    for (int i = 1; i <= rows; i++) {
        sqlite3_bind_int(insert, 1, i);
        sqlite3_bind_int(insert, 2, i);
        TRY(sqlite3_step(insert));
        sqlite3_reset(insert);
    }
    sqlite3_finalize(insert);
    TRY(sqlite3_exec(db, "COMMIT;", NULL, NULL, NULL));
    TRY(sqlite3_close(db));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [ROWS]\n", argv[0]);
        return 2;
    }
    int rows = argc > 2 ? atoi(argv[2]) : 20000;
    char path[4096];
    snprintf(path, sizeof path, "%s/in-place.db", argv[1]);
    create(path, rows);

    /* Map the file; SQLite gets the mapping as its database, writing in place. */
    struct udax_map *map;
    int err = udax_map_path(path, NULL, &map);
    if (err) {
        fprintf(stderr, "udax_map_path: %s\n", udax_strerror(err));
        return 1;
    }
    sqlite3 *db;
    TRY(sqlite3_open(":memory:", &db));
    size_t len = udax_len(map);
    TRY(sqlite3_deserialize(db, "main", udax_addr(map), (sqlite3_int64)len, (sqlite3_int64)len, 0));
    int64_t sum = query(db, "SELECT sum(value) FROM t", NULL, 0);
    int64_t expected = (int64_t)rows * (rows + 1) / 2;
    /* One row in 100 gets +1: a few leaf pages and page 1 (the change counter). */
    TRY(sqlite3_exec(db, "UPDATE t SET value = value + 1 WHERE id % 100 = 0", NULL, NULL, NULL));
    int64_t changed = sqlite3_changes(db);
    int64_t after = query(db, "SELECT sum(value) FROM t", NULL, 0);
    TRY(sqlite3_close(db)); /* flags 0: SQLite does not free or resize the mapping */

    struct udax_stats st;
    err = udax_flush(map);
    if (err) {
        fprintf(stderr, "udax_flush: %s\n", udax_strerror(err));
        return 1;
    }
    udax_stats(map, &st);
    uint64_t first_writes = st.write_faults + st.mkwrite_faults + st.zero_to_dirty;
    udax_unmap(map);

    /* A fresh connection on the file itself. */
    sqlite3 *fresh;
    TRY(sqlite3_open_v2(path, &fresh, SQLITE_OPEN_READONLY, NULL));
    char check[256];
    query(fresh, "PRAGMA integrity_check", check, sizeof check);
    int64_t on_disk = query(fresh, "SELECT sum(value) FROM t", NULL, 0);
    TRY(sqlite3_close(fresh));

    printf("sqlite in place: %zu KiB db, %d rows, sum %lld -> %lld (%lld rows updated)\n",
           len >> 10, rows, (long long)sum, (long long)after, (long long)changed);
    printf("faults: %llu read, %llu first writes (%llu write + %llu mkwrite); "
           "pages written back %llu; integrity_check %s; on disk sum %lld\n",
           (unsigned long long)st.read_faults, (unsigned long long)first_writes,
           (unsigned long long)st.write_faults, (unsigned long long)st.mkwrite_faults,
           (unsigned long long)st.pages_written_back, check, (long long)on_disk);
    int ok = sum == expected && after == expected + changed && changed == rows / 100 &&
             st.pages_written_back == first_writes && first_writes > 0 &&
             first_writes < len / 4096 && strcmp(check, "ok") == 0 && on_disk == after;
    if (!ok) {
        fprintf(stderr, "sqlite in place: FAILED\n");
        return 1;
    }
    return 0;
}
