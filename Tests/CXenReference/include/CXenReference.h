// The C side of PVKit's ABI and ring tests: compiled against Xen's own public headers
// (/usr/include/xen from libxen-dev), so what it reports is what C code sees.
#ifndef PVKIT_CXENREFERENCE_H
#define PVKIT_CXENREFERENCE_H
#include <stddef.h>
#include <stdint.h>

/// One layout or constant fact: "struct.field" offsets, "sizeof(struct)", constants by C name.
typedef struct {
    const char *name;
    int64_t value;
} cxr_fact;

/// The table of facts; *count receives its length.
const cxr_fact *cxr_abi_facts(size_t *count);

/// xs_wire.h's xsd_errors[] table: entry index's name and errno; NULL past the end.
const char *cxr_xsd_error(size_t index, int *errnum);

/// A blkif front end driven by ring.h's macros, on memory shared with a Swift back end.
typedef struct cxr_blk_front cxr_blk_front;
/// SHARED_RING_INIT (with both indexes at start) + FRONT_RING_ATTACH, or only FRONT_RING_INIT
/// when initialize is 0.
cxr_blk_front *cxr_blk_front_new(void *memory, size_t bytes, int initialize, uint32_t start);
void cxr_blk_front_free(cxr_blk_front *front);
uint32_t cxr_blk_front_free_requests(cxr_blk_front *front);
/// Fills the next request (read, nseg segments with gref = id + i); 0 when the ring is full.
int cxr_blk_front_put(cxr_blk_front *front, uint64_t id, uint64_t sector, uint8_t nseg);
/// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: the notify decision.
int cxr_blk_front_push(cxr_blk_front *front);
/// Takes the next response (RING_COPY_RESPONSE); 0 when none.
int cxr_blk_front_take(cxr_blk_front *front, uint64_t *id, uint8_t *operation, int16_t *status);
/// RING_FINAL_CHECK_FOR_RESPONSES: work to do.
int cxr_blk_front_final_check(cxr_blk_front *front);

/// A blkif back end driven by ring.h's macros.
typedef struct cxr_blk_back cxr_blk_back;
cxr_blk_back *cxr_blk_back_new(void *memory, size_t bytes, uint32_t start);
void cxr_blk_back_free(cxr_blk_back *back);
/// Takes the next request (RING_COPY_REQUEST) if RING_HAS_UNCONSUMED_REQUESTS; 0 when none.
int cxr_blk_back_take(cxr_blk_back *back, uint64_t *id, uint64_t *sector, uint8_t *nseg, uint32_t *first_gref);
/// Writes a response at rsp_prod_pvt.
void cxr_blk_back_respond(cxr_blk_back *back, uint64_t id, uint8_t operation, int16_t status);
/// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: the notify decision.
int cxr_blk_back_push(cxr_blk_back *back);
/// RING_FINAL_CHECK_FOR_REQUESTS: work to do.
int cxr_blk_back_final_check(cxr_blk_back *back);

#endif
