/*
 * pgfloor — the database floor: C threads, each with its own connection,
 * commit one-row INSERTs (durable: synchronous_commit as configured) for S
 * seconds. Prints name=pg_floor conc=C commits=N tps=T p50_ms p99_ms.
 * usage: pgfloor CONNINFO CONC SECONDS
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "httpc.h"

typedef struct {
    const char *conninfo;
    double seconds;
    double *lat;
    size_t n, cap;
    int failed;
} worker;

static void *run(void *arg)
{
    worker *w = arg;
    PGconn *c = PQconnectdb(w->conninfo);
    double end = httpc_now() + w->seconds;
    if (PQstatus(c) != CONNECTION_OK) {
        w->failed = 1;
        PQfinish(c);
        return NULL;
    }
    while (httpc_now() < end) {
        double t0 = httpc_now();
        PGresult *r = PQexec(c, "INSERT INTO qkms_bench_floor (at) VALUES (now())");
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            w->failed = 1;
        PQclear(r);
        if (w->n == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 8192;
            w->lat = realloc(w->lat, w->cap * sizeof(double));
        }
        w->lat[w->n++] = (httpc_now() - t0) * 1000;
    }
    PQfinish(c);
    return NULL;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int conc;
    worker *w;
    pthread_t *th;
    size_t total = 0;
    double t0, el, *all;
    PGconn *c;
    if (argc != 4)
        return 2;
    conc = atoi(argv[2]);
    c = PQconnectdb(argv[1]);
    PQclear(PQexec(c, "CREATE TABLE IF NOT EXISTS qkms_bench_floor (id bigserial PRIMARY KEY, at timestamptz)"));
    PQfinish(c);
    w = calloc((size_t)conc, sizeof(*w));
    th = calloc((size_t)conc, sizeof(*th));
    t0 = httpc_now();
    for (int i = 0; i < conc; i++) {
        w[i].conninfo = argv[1];
        w[i].seconds = atof(argv[3]);
        pthread_create(&th[i], NULL, run, &w[i]);
    }
    for (int i = 0; i < conc; i++)
        pthread_join(th[i], NULL);
    el = httpc_now() - t0;
    for (int i = 0; i < conc; i++)
        total += w[i].n;
    all = malloc((total ? total : 1) * sizeof(double));
    total = 0;
    for (int i = 0; i < conc; i++) {
        memcpy(all + total, w[i].lat, w[i].n * sizeof(double));
        total += w[i].n;
        free(w[i].lat);
    }
    qsort(all, total, sizeof(double), cmpd);
    printf("name=pg_floor conc=%d commits=%zu tps=%.0f p50_ms=%.3f p99_ms=%.3f\n", conc, total,
           (double)total / el, total ? all[total / 2] : 0, total ? all[(size_t)((double)total * 0.99)] : 0);
    c = PQconnectdb(argv[1]);
    PQclear(PQexec(c, "DROP TABLE IF EXISTS qkms_bench_floor"));
    PQfinish(c);
    free(all);
    free(w);
    free(th);
    return 0;
}
