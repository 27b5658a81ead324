/*
 * Reference continuum for the golden tests: libketama's and twemproxy's ketama algorithms written
 * out in C, so that their single-precision float rounding, floorf and binary searches are the C
 * compiler's and the C library's, not an emulation of them.
 *
 * usage: ketama_reference libketama|twemproxy keys|continuum < input
 * input: a line with the number of servers, one "name weight" line per server, then (for "keys")
 * one key per line. Output: the owning server name per key, or "point name" per continuum entry.
 */
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned int point; int server; } entry;
typedef struct { char name[128]; unsigned long weight; } server;

static void md5(const char *data, size_t len, unsigned char out[16]) {
    unsigned int n = 16;
    EVP_Digest(data, len, out, &n, EVP_md5(), NULL);
}

static unsigned int point_at(const unsigned char d[16], int h) {
    return ((unsigned int)d[3 + h * 4] << 24) | ((unsigned int)d[2 + h * 4] << 16)
         | ((unsigned int)d[1 + h * 4] << 8) | d[h * 4];
}

static int cmp(const void *a, const void *b) {
    const entry *x = a, *y = b;
    return x->point < y->point ? -1 : (x->point > y->point ? 1 : 0);
}

/* libketama ketama_create_continuum: float pct, floorf(pct * 40.0 * (float)numservers) hashes. */
static int build_libketama(server *s, unsigned int n, entry *c) {
    unsigned long total = 0;
    int cont = 0;
    for (unsigned int i = 0; i < n; i++) total += s[i].weight;
    for (unsigned int i = 0; i < n; i++) {
        float pct = (float)s[i].weight / (float)total;
        unsigned int ks = floorf(pct * 40.0 * (float)n);
        for (unsigned int k = 0; k < ks; k++) {
            char ss[160];
            unsigned char d[16];
            sprintf(ss, "%s-%d", s[i].name, k);
            md5(ss, strlen(ss), d);
            for (int h = 0; h < 4; h++) { c[cont].point = point_at(d, h); c[cont].server = i; cont++; }
        }
    }
    return cont;
}

/* twemproxy ketama_update: points per server in float arithmetic plus 1e-10, floored, times 4. */
static int build_twemproxy(server *s, unsigned int n, entry *c) {
    unsigned int total = 0;
    int cont = 0;
    for (unsigned int i = 0; i < n; i++) total += (unsigned int)s[i].weight;
    for (unsigned int i = 0; i < n; i++) {
        float pct = (float)s[i].weight / (float)total;
        unsigned int pps = (unsigned int)((floorf((float)(pct * 160 / 4 * (float)n + 0.0000000001))) * 4);
        for (unsigned int p = 1; p <= pps / 4; p++) {
            char host[160];
            unsigned char d[16];
            int len = snprintf(host, sizeof host, "%s-%u", s[i].name, p - 1);
            md5(host, (size_t)len, d);
            for (int x = 0; x < 4; x++) { c[cont].point = point_at(d, x); c[cont].server = i; cont++; }
        }
    }
    return cont;
}

/* libketama ketama_get_server, search loop kept as written there. */
static int find_libketama(const entry *c, int numpoints, unsigned int h) {
    int highp = numpoints, lowp = 0, midp;
    unsigned int midval, midval1;
    while (1) {
        midp = (int)((lowp + highp) / 2);
        if (midp == numpoints) return 0;
        midval = c[midp].point;
        midval1 = midp == 0 ? 0 : c[midp - 1].point;
        if (h <= midval && h > midval1) return midp;
        if (midval < h) lowp = midp + 1; else highp = midp - 1;
        if (lowp > highp) return 0;
    }
}

/* twemproxy ketama_dispatch. */
static int find_twemproxy(const entry *c, int n, unsigned int h) {
    int left = 0, right = n;
    while (left < right) {
        int middle = left + (right - left) / 2;
        if (c[middle].point < h) left = middle + 1; else right = middle;
    }
    return right == n ? 0 : right;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s libketama|twemproxy keys|continuum\n", argv[0]); return 2; }
    int libketama = strcmp(argv[1], "libketama") == 0;
    unsigned int n;
    if (scanf("%u", &n) != 1) return 2;
    server *s = calloc(n, sizeof *s);
    for (unsigned int i = 0; i < n; i++)
        if (scanf("%127s %lu", s[i].name, &s[i].weight) != 2) return 2;
    entry *c = calloc((size_t)n * 1000 + 16, sizeof *c);
    int numpoints = libketama ? build_libketama(s, n, c) : build_twemproxy(s, n, c);
    qsort(c, numpoints, sizeof *c, cmp);
    if (strcmp(argv[2], "continuum") == 0) {
        for (int i = 0; i < numpoints; i++) printf("%u %s\n", c[i].point, s[c[i].server].name);
        return 0;
    }
    char line[4096];
    fgets(line, sizeof line, stdin); /* rest of the last server line */
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strcspn(line, "\n");
        line[len] = '\0';
        unsigned char d[16];
        md5(line, len, d);
        unsigned int h = point_at(d, 0);
        int i = libketama ? find_libketama(c, numpoints, h) : find_twemproxy(c, numpoints, h);
        printf("%s\n", s[c[i].server].name);
    }
    return 0;
}
