// The C baseline for PVKit's ring benchmark, and a ring.h peer for the cross-process tests.
//
//   ring-bench-c run  --proto blkif|netif --mode threads|processes --count N
//   ring-bench-c peer --proto blkif|netif --role front|back --memfd FD --bytes B
//                     --front-evt FD --back-evt FD --count N
//
// Both ends follow ring.h exactly: push-and-check-notify, final checks before sleeping, and
// an eventfd per direction standing in for the event channel (coalescing like a pending bit).
// Output is one line of key=value pairs; exit status 1 when a message arrived wrong.
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define __XEN_INTERFACE_VERSION__ 0x00040e00
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/xen.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>

#ifndef XEN_PAGE_SIZE
#define XEN_PAGE_SIZE 4096
#endif

// The shared producer indexes are read in loops; ring.h's plain reads need the compiler to
// re-load them, which the acquire fence after each read guarantees.

typedef struct {
    int blkif;            // 1 = blkif (112-byte slots), 0 = netif tx (12-byte slots)
    void *memory;
    size_t bytes;
    int front_evt;        // written by the back end to wake the front end
    int back_evt;         // written by the front end to wake the back end
    uint64_t count;
    uint64_t events;      // notifications this end sent
    int failed;
} end_t;

static void notify(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, 8) != 8) { perror("eventfd write"); exit(2); }
}

static void wait_event(int fd) {
    uint64_t value;
    if (read(fd, &value, 8) != 8) { perror("eventfd read"); exit(2); }
}

static void *run_front(void *arg) {
    end_t *e = arg;
    uint64_t sent = 0, received = 0;
    if (e->blkif) {
        blkif_front_ring_t ring;
        SHARED_RING_INIT((blkif_sring_t *)e->memory);
        FRONT_RING_INIT(&ring, (blkif_sring_t *)e->memory, e->bytes);
        while (received < e->count) {
            while (sent < e->count && !RING_FULL(&ring)) {
                blkif_request_t *req = RING_GET_REQUEST(&ring, ring.req_prod_pvt++);
                req->operation = BLKIF_OP_READ;
                req->nr_segments = BLKIF_MAX_SEGMENTS_PER_REQUEST;
                req->handle = 51712;
                req->id = sent;
                req->sector_number = sent * 88;
                for (int i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
                    req->seg[i].gref = (grant_ref_t)(sent + i);
                    req->seg[i].first_sect = 0;
                    req->seg[i].last_sect = 7;
                }
                sent++;
            }
            int do_notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring, do_notify);
            if (do_notify) { notify(e->back_evt); e->events++; }
            int got = 0;
            while (RING_HAS_UNCONSUMED_RESPONSES(&ring)) {
                xen_rmb();
                blkif_response_t rsp;
                RING_COPY_RESPONSE(&ring, ring.rsp_cons, &rsp);
                ring.rsp_cons++;
                if (rsp.id != received || rsp.status != BLKIF_RSP_OKAY || rsp.operation != BLKIF_OP_READ) {
                    fprintf(stderr, "front: response %llu has id %llu status %d\n",
                            (unsigned long long)received, (unsigned long long)rsp.id, rsp.status);
                    e->failed = 1;
                    return NULL;
                }
                received++;
                got++;
            }
            if (!got && received < e->count) {
                int more;
                RING_FINAL_CHECK_FOR_RESPONSES(&ring, more);
                if (!more) wait_event(e->front_evt);
            }
        }
    } else {
        netif_tx_front_ring_t ring;
        SHARED_RING_INIT((netif_tx_sring_t *)e->memory);
        FRONT_RING_INIT(&ring, (netif_tx_sring_t *)e->memory, e->bytes);
        while (received < e->count) {
            while (sent < e->count && !RING_FULL(&ring)) {
                netif_tx_request_t *req = RING_GET_REQUEST(&ring, ring.req_prod_pvt++);
                req->gref = (grant_ref_t)(sent + 8);
                req->offset = 0;
                req->flags = 0;
                req->id = (uint16_t)sent;
                req->size = 60 + (uint16_t)(sent % 1400);
                sent++;
            }
            int do_notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring, do_notify);
            if (do_notify) { notify(e->back_evt); e->events++; }
            int got = 0;
            while (RING_HAS_UNCONSUMED_RESPONSES(&ring)) {
                xen_rmb();
                netif_tx_response_t rsp;
                RING_COPY_RESPONSE(&ring, ring.rsp_cons, &rsp);
                ring.rsp_cons++;
                if (rsp.id != (uint16_t)received || rsp.status != NETIF_RSP_OKAY) {
                    fprintf(stderr, "front: response %llu has id %u status %d\n",
                            (unsigned long long)received, rsp.id, rsp.status);
                    e->failed = 1;
                    return NULL;
                }
                received++;
                got++;
            }
            if (!got && received < e->count) {
                int more;
                RING_FINAL_CHECK_FOR_RESPONSES(&ring, more);
                if (!more) wait_event(e->front_evt);
            }
        }
    }
    return NULL;
}

static void *run_back(void *arg) {
    end_t *e = arg;
    uint64_t done = 0;
    if (e->blkif) {
        blkif_back_ring_t ring;
        BACK_RING_INIT(&ring, (blkif_sring_t *)e->memory, e->bytes);
        while (done < e->count) {
            while (RING_HAS_UNCONSUMED_REQUESTS(&ring)) {
                xen_rmb();
                blkif_request_t req;
                RING_COPY_REQUEST(&ring, ring.req_cons, &req);
                ring.req_cons++;
                // Validate as a back end must: operation, segment count, sector ranges, id.
                int bad = req.operation != BLKIF_OP_READ || req.nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST
                          || req.id != done;
                for (int i = 0; !bad && i < req.nr_segments; i++)
                    bad = req.seg[i].first_sect > req.seg[i].last_sect || req.seg[i].last_sect > 7;
                if (bad) {
                    fprintf(stderr, "back: request %llu is malformed (id %llu)\n",
                            (unsigned long long)done, (unsigned long long)req.id);
                    e->failed = 1;
                    return NULL;
                }
                blkif_response_t *rsp = RING_GET_RESPONSE(&ring, ring.rsp_prod_pvt++);
                rsp->id = req.id;
                rsp->operation = req.operation;
                rsp->status = BLKIF_RSP_OKAY;
                done++;
            }
            int do_notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&ring, do_notify);
            if (do_notify) { notify(e->front_evt); e->events++; }
            if (done < e->count) {
                int more;
                RING_FINAL_CHECK_FOR_REQUESTS(&ring, more);
                if (!more) wait_event(e->back_evt);
            }
        }
    } else {
        netif_tx_back_ring_t ring;
        BACK_RING_INIT(&ring, (netif_tx_sring_t *)e->memory, e->bytes);
        while (done < e->count) {
            while (RING_HAS_UNCONSUMED_REQUESTS(&ring)) {
                xen_rmb();
                netif_tx_request_t req;
                RING_COPY_REQUEST(&ring, ring.req_cons, &req);
                ring.req_cons++;
                if (req.id != (uint16_t)done || req.offset + req.size > XEN_PAGE_SIZE) {
                    fprintf(stderr, "back: request %llu is malformed (id %u)\n", (unsigned long long)done, req.id);
                    e->failed = 1;
                    return NULL;
                }
                netif_tx_response_t *rsp = RING_GET_RESPONSE(&ring, ring.rsp_prod_pvt++);
                rsp->id = req.id;
                rsp->status = NETIF_RSP_OKAY;
                done++;
            }
            int do_notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&ring, do_notify);
            if (do_notify) { notify(e->front_evt); e->events++; }
            if (done < e->count) {
                int more;
                RING_FINAL_CHECK_FOR_REQUESTS(&ring, more);
                if (!more) wait_event(e->back_evt);
            }
        }
    }
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *arg(int argc, char **argv, const char *name, const char *fallback) {
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
}

static int usage(void) {
    fprintf(stderr, "usage: ring-bench-c run --proto blkif|netif --mode threads|processes --count N\n"
                    "       ring-bench-c peer --proto blkif|netif --role front|back --memfd FD --bytes B"
                    " --front-evt FD --back-evt FD --count N\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *proto = arg(argc, argv, "--proto", "blkif");
    end_t e = {0};
    e.blkif = strcmp(proto, "blkif") == 0;
    e.count = strtoull(arg(argc, argv, "--count", "1000000"), NULL, 10);
    e.bytes = 4096;

    if (strcmp(argv[1], "peer") == 0) {
        int memfd = atoi(arg(argc, argv, "--memfd", "-1"));
        e.bytes = strtoull(arg(argc, argv, "--bytes", "4096"), NULL, 10);
        e.front_evt = atoi(arg(argc, argv, "--front-evt", "-1"));
        e.back_evt = atoi(arg(argc, argv, "--back-evt", "-1"));
        e.memory = mmap(NULL, e.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (e.memory == MAP_FAILED) { perror("mmap"); return 2; }
        const char *role = arg(argc, argv, "--role", "back");
        if (strcmp(role, "back") == 0) run_back(&e); else run_front(&e);
        printf("role=%s requests=%llu events=%llu\n", role, (unsigned long long)e.count, (unsigned long long)e.events);
        return e.failed;
    }
    if (strcmp(argv[1], "run") != 0) return usage();

    const char *mode = arg(argc, argv, "--mode", "threads");
    int memfd = memfd_create("ring-bench-c", 0);
    if (memfd < 0 || ftruncate(memfd, e.bytes) != 0) { perror("memfd"); return 2; }
    e.memory = mmap(NULL, e.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    e.front_evt = eventfd(0, 0);
    e.back_evt = eventfd(0, 0);
    int ready = eventfd(0, 0);
    memset(e.memory, 0, e.bytes);
    SHARED_RING_INIT((blkif_sring_t *)e.memory);  // the back end attaches to an initialised ring
    end_t back = e;
    double start, end;
    uint64_t back_events = 0;
    int failed = 0;
    if (strcmp(mode, "threads") == 0) {
        pthread_t thread;
        start = now();
        pthread_create(&thread, NULL, run_back, &back);
        run_front(&e);
        pthread_join(thread, NULL);
        end = now();
        back_events = back.events;
        failed = e.failed || back.failed;
    } else {
        int report[2];
        if (pipe(report) != 0) { perror("pipe"); return 2; }
        pid_t child = fork();
        if (child == 0) {
            notify(ready);
            run_back(&back);
            if (write(report[1], &back.events, 8) != 8) _exit(3);
            _exit(back.failed);
        }
        wait_event(ready);
        start = now();
        run_front(&e);
        int status = 0;
        if (read(report[0], &back_events, 8) != 8) back_events = 0;
        end = now();
        waitpid(child, &status, 0);
        failed = e.failed || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    printf("requests=%llu seconds=%.6f front_events=%llu back_events=%llu\n", (unsigned long long)e.count,
           end - start, (unsigned long long)e.events, (unsigned long long)back_events);
    return failed;
}
