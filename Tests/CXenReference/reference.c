// Layout facts and ring.h-driven ring ends, from Xen's public headers.
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

// The importer-visible header carries no Xen types; the interface version matters only here.
#define __XEN_INTERFACE_VERSION__ 0x00040e00

// ring.h leaves the barriers to its user: on x86 a full barrier is mfence, read and write
// barriers only need to stop the compiler.
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#include <xen/xen.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/xs_wire.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/elfnote.h>
#include <xen/features.h>
#include <sys/ioctl.h>
#include <xen/sys/evtchn.h>
#include <xen/sys/gntalloc.h>

#include "CXenReference.h"

#define SIZE(t) { "sizeof(" #t ")", (int64_t)sizeof(struct t) }
#define OFF(t, f) { #t "." #f, (int64_t)offsetof(struct t, f) }
#define CONST(c) { #c, (int64_t)(c) }
// Entries per ring of 2^order pages, by __CONST_RING_SIZE's formula on the real sring type.
#define RING(tag, order) { "ring." #tag ".order" #order, \
    (int64_t)__RD32(((XEN_PAGE_SIZE << (order)) - (long)offsetof(struct tag##_sring, ring)) / \
                    (long)sizeof(((struct tag##_sring *)0)->ring[0])) }
#define RINGS(tag) RING(tag, 0), RING(tag, 1), RING(tag, 2), RING(tag, 3), RING(tag, 4)

#ifndef XEN_PAGE_SIZE
#define XEN_PAGE_SIZE 4096
#endif

static const cxr_fact facts[] = {
    // io/ring.h: the header of every sring (blkif's stands for all).
    OFF(blkif_sring, req_prod), OFF(blkif_sring, req_event), OFF(blkif_sring, rsp_prod),
    OFF(blkif_sring, rsp_event), OFF(blkif_sring, pvt), OFF(blkif_sring, __pad), OFF(blkif_sring, ring),
    RINGS(blkif), RINGS(netif_tx), RINGS(netif_rx), RINGS(xen_netif_ctrl),
    { "sizeof(union blkif_sring_entry)", sizeof(union blkif_sring_entry) },
    { "sizeof(union netif_tx_sring_entry)", sizeof(union netif_tx_sring_entry) },
    { "sizeof(union netif_rx_sring_entry)", sizeof(union netif_rx_sring_entry) },
    { "sizeof(union xen_netif_ctrl_sring_entry)", sizeof(union xen_netif_ctrl_sring_entry) },

    // io/blkif.h
    SIZE(blkif_request_segment), OFF(blkif_request_segment, gref), OFF(blkif_request_segment, first_sect),
    OFF(blkif_request_segment, last_sect),
    SIZE(blkif_request), OFF(blkif_request, operation), OFF(blkif_request, nr_segments), OFF(blkif_request, handle),
    OFF(blkif_request, id), OFF(blkif_request, sector_number), OFF(blkif_request, seg),
    SIZE(blkif_request_discard), OFF(blkif_request_discard, flag), OFF(blkif_request_discard, handle),
    OFF(blkif_request_discard, id), OFF(blkif_request_discard, sector_number), OFF(blkif_request_discard, nr_sectors),
    SIZE(blkif_request_indirect), OFF(blkif_request_indirect, indirect_op), OFF(blkif_request_indirect, nr_segments),
    OFF(blkif_request_indirect, id), OFF(blkif_request_indirect, sector_number), OFF(blkif_request_indirect, handle),
    OFF(blkif_request_indirect, indirect_grefs),
    SIZE(blkif_response), OFF(blkif_response, id), OFF(blkif_response, operation), OFF(blkif_response, status),
    CONST(BLKIF_OP_READ), CONST(BLKIF_OP_WRITE), CONST(BLKIF_OP_WRITE_BARRIER), CONST(BLKIF_OP_FLUSH_DISKCACHE),
    CONST(BLKIF_OP_RESERVED_1), CONST(BLKIF_OP_DISCARD), CONST(BLKIF_OP_INDIRECT),
    CONST(BLKIF_MAX_SEGMENTS_PER_REQUEST), CONST(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    CONST(BLKIF_RSP_OKAY), CONST(BLKIF_RSP_ERROR), CONST(BLKIF_RSP_EOPNOTSUPP), CONST(BLKIF_DISCARD_SECURE),
    CONST(VDISK_CDROM), CONST(VDISK_REMOVABLE), CONST(VDISK_READONLY),

    // io/netif.h
    SIZE(netif_tx_request), OFF(netif_tx_request, gref), OFF(netif_tx_request, offset), OFF(netif_tx_request, flags),
    OFF(netif_tx_request, id), OFF(netif_tx_request, size),
    SIZE(netif_tx_response), OFF(netif_tx_response, id), OFF(netif_tx_response, status),
    SIZE(netif_rx_request), OFF(netif_rx_request, id), OFF(netif_rx_request, gref),
    SIZE(netif_rx_response), OFF(netif_rx_response, id), OFF(netif_rx_response, offset),
    OFF(netif_rx_response, flags), OFF(netif_rx_response, status),
    SIZE(netif_extra_info), OFF(netif_extra_info, type), OFF(netif_extra_info, flags),
    OFF(netif_extra_info, u.gso.size), OFF(netif_extra_info, u.gso.type), OFF(netif_extra_info, u.gso.features),
    OFF(netif_extra_info, u.mcast.addr), OFF(netif_extra_info, u.hash.type), OFF(netif_extra_info, u.hash.algorithm),
    OFF(netif_extra_info, u.hash.value),
    SIZE(xen_netif_ctrl_request), OFF(xen_netif_ctrl_request, id), OFF(xen_netif_ctrl_request, type),
    OFF(xen_netif_ctrl_request, data),
    SIZE(xen_netif_ctrl_response), OFF(xen_netif_ctrl_response, id), OFF(xen_netif_ctrl_response, type),
    OFF(xen_netif_ctrl_response, status), OFF(xen_netif_ctrl_response, data),
    SIZE(xen_netif_gref), OFF(xen_netif_gref, ref), OFF(xen_netif_gref, flags), OFF(xen_netif_gref, status),
    CONST(_NETTXF_csum_blank), CONST(_NETTXF_data_validated), CONST(_NETTXF_more_data), CONST(_NETTXF_extra_info),
    CONST(NETTXF_csum_blank), CONST(NETTXF_data_validated), CONST(NETTXF_more_data), CONST(NETTXF_extra_info),
    CONST(NETRXF_data_validated), CONST(NETRXF_csum_blank), CONST(NETRXF_more_data), CONST(NETRXF_extra_info),
    CONST(NETRXF_gso_prefix),
    CONST(XEN_NETIF_EXTRA_TYPE_NONE), CONST(XEN_NETIF_EXTRA_TYPE_GSO), CONST(XEN_NETIF_EXTRA_TYPE_MCAST_ADD),
    CONST(XEN_NETIF_EXTRA_TYPE_MCAST_DEL), CONST(XEN_NETIF_EXTRA_TYPE_HASH), CONST(XEN_NETIF_EXTRA_TYPE_MAX),
    CONST(XEN_NETIF_EXTRA_FLAG_MORE),
    CONST(XEN_NETIF_GSO_TYPE_NONE), CONST(XEN_NETIF_GSO_TYPE_TCPV4), CONST(XEN_NETIF_GSO_TYPE_TCPV6),
    CONST(NETIF_RSP_DROPPED), CONST(NETIF_RSP_ERROR), CONST(NETIF_RSP_OKAY), CONST(NETIF_RSP_NULL),
    CONST(XEN_NETIF_NR_SLOTS_MIN), CONST(XEN_NETIF_MAX_TX_SIZE),
    CONST(XEN_NETIF_CTRL_TYPE_INVALID), CONST(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS),
    CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS), CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY),
    CONST(XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE), CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE),
    CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING), CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM),
    CONST(XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE), CONST(XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING),
    CONST(XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING),
    CONST(XEN_NETIF_CTRL_STATUS_SUCCESS), CONST(XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED),
    CONST(XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER), CONST(XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW),
    CONST(XEN_NETIF_CTRL_HASH_ALGORITHM_NONE), CONST(XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ),
    CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV4), CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP),
    CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV6), CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP),

    // io/xs_wire.h
    SIZE(xsd_sockmsg), OFF(xsd_sockmsg, type), OFF(xsd_sockmsg, req_id), OFF(xsd_sockmsg, tx_id), OFF(xsd_sockmsg, len),
    SIZE(xenstore_domain_interface), OFF(xenstore_domain_interface, req), OFF(xenstore_domain_interface, rsp),
    OFF(xenstore_domain_interface, req_cons), OFF(xenstore_domain_interface, req_prod),
    OFF(xenstore_domain_interface, rsp_cons), OFF(xenstore_domain_interface, rsp_prod),
    OFF(xenstore_domain_interface, server_features), OFF(xenstore_domain_interface, connection),
    OFF(xenstore_domain_interface, error),
    CONST(XS_CONTROL), CONST(XS_DIRECTORY), CONST(XS_READ), CONST(XS_GET_PERMS), CONST(XS_WATCH), CONST(XS_UNWATCH),
    CONST(XS_TRANSACTION_START), CONST(XS_TRANSACTION_END), CONST(XS_INTRODUCE), CONST(XS_RELEASE),
    CONST(XS_GET_DOMAIN_PATH), CONST(XS_WRITE), CONST(XS_MKDIR), CONST(XS_RM), CONST(XS_SET_PERMS),
    CONST(XS_WATCH_EVENT), CONST(XS_ERROR), CONST(XS_IS_DOMAIN_INTRODUCED), CONST(XS_RESUME), CONST(XS_SET_TARGET),
    CONST(XS_RESET_WATCHES), CONST(XS_DIRECTORY_PART), CONST(XS_TYPE_COUNT), CONST(XS_INVALID),
    CONST(XENSTORE_RING_SIZE), CONST(XENSTORE_PAYLOAD_MAX), CONST(XENSTORE_ABS_PATH_MAX), CONST(XENSTORE_REL_PATH_MAX),
    CONST(XENSTORE_SERVER_FEATURE_RECONNECTION), CONST(XENSTORE_SERVER_FEATURE_ERROR),
    CONST(XENSTORE_CONNECTED), CONST(XENSTORE_RECONNECT),
    CONST(XENSTORE_ERROR_NONE), CONST(XENSTORE_ERROR_COMM), CONST(XENSTORE_ERROR_RINGIDX), CONST(XENSTORE_ERROR_PROTO),

    // io/xenbus.h
    CONST(XenbusStateUnknown), CONST(XenbusStateInitialising), CONST(XenbusStateInitWait),
    CONST(XenbusStateInitialised), CONST(XenbusStateConnected), CONST(XenbusStateClosing), CONST(XenbusStateClosed),
    CONST(XenbusStateReconfiguring), CONST(XenbusStateReconfigured),

    // grant_table.h
    SIZE(grant_entry_v1), OFF(grant_entry_v1, flags), OFF(grant_entry_v1, domid), OFF(grant_entry_v1, frame),
    SIZE(grant_entry_header), OFF(grant_entry_header, flags), OFF(grant_entry_header, domid),
    { "sizeof(union grant_entry_v2)", sizeof(union grant_entry_v2) },
    { "grant_entry_v2.full_page.frame", offsetof(union grant_entry_v2, full_page.frame) },
    CONST(GTF_invalid), CONST(GTF_permit_access), CONST(GTF_accept_transfer), CONST(GTF_transitive),
    CONST(GTF_type_mask), CONST(GTF_readonly), CONST(GTF_reading), CONST(GTF_writing), CONST(GTF_PWT), CONST(GTF_PCD),
    CONST(GTF_PAT), CONST(GTF_sub_page), CONST(GTF_transfer_committed), CONST(GTF_transfer_completed),
    CONST(GNTTAB_NR_RESERVED_ENTRIES), CONST(GNTTAB_RESERVED_CONSOLE), CONST(GNTTAB_RESERVED_XENSTORE),
    CONST(GNTTABOP_map_grant_ref), CONST(GNTTABOP_unmap_grant_ref), CONST(GNTTABOP_setup_table),
    CONST(GNTTABOP_dump_table), CONST(GNTTABOP_transfer), CONST(GNTTABOP_copy), CONST(GNTTABOP_query_size),
    CONST(GNTTABOP_unmap_and_replace), CONST(GNTTABOP_set_version), CONST(GNTTABOP_get_status_frames),
    CONST(GNTTABOP_get_version), CONST(GNTTABOP_swap_grant_ref), CONST(GNTTABOP_cache_flush),
    CONST(GNTMAP_device_map), CONST(GNTMAP_host_map), CONST(GNTMAP_readonly), CONST(GNTMAP_application_map),
    CONST(GNTMAP_contains_pte), CONST(GNTCOPY_source_gref), CONST(GNTCOPY_dest_gref),
    CONST(GNTST_okay), CONST(GNTST_general_error), CONST(GNTST_bad_domain), CONST(GNTST_bad_gntref),
    CONST(GNTST_bad_handle), CONST(GNTST_bad_virt_addr), CONST(GNTST_bad_dev_addr), CONST(GNTST_no_device_space),
    CONST(GNTST_permission_denied), CONST(GNTST_bad_page), CONST(GNTST_bad_copy_arg), CONST(GNTST_address_too_big),
    CONST(GNTST_eagain), CONST(GNTST_no_space),

    // event_channel.h, xen.h
    SIZE(evtchn_alloc_unbound), OFF(evtchn_alloc_unbound, dom), OFF(evtchn_alloc_unbound, remote_dom),
    OFF(evtchn_alloc_unbound, port),
    SIZE(evtchn_bind_interdomain), OFF(evtchn_bind_interdomain, remote_dom), OFF(evtchn_bind_interdomain, remote_port),
    OFF(evtchn_bind_interdomain, local_port),
    SIZE(evtchn_send), SIZE(evtchn_close), SIZE(evtchn_unmask),
    CONST(EVTCHNOP_bind_interdomain), CONST(EVTCHNOP_bind_virq), CONST(EVTCHNOP_bind_pirq), CONST(EVTCHNOP_close),
    CONST(EVTCHNOP_send), CONST(EVTCHNOP_status), CONST(EVTCHNOP_alloc_unbound), CONST(EVTCHNOP_bind_ipi),
    CONST(EVTCHNOP_bind_vcpu), CONST(EVTCHNOP_unmask), CONST(EVTCHNOP_reset), CONST(EVTCHNOP_init_control),
    CONST(EVTCHNOP_expand_array), CONST(EVTCHNOP_set_priority),
    CONST(EVTCHNSTAT_closed), CONST(EVTCHNSTAT_unbound), CONST(EVTCHNSTAT_interdomain), CONST(EVTCHNSTAT_pirq),
    CONST(EVTCHNSTAT_virq), CONST(EVTCHNSTAT_ipi), CONST(EVTCHN_2L_NR_CHANNELS),
    CONST(DOMID_FIRST_RESERVED), CONST(DOMID_SELF), CONST(DOMID_IO), CONST(DOMID_XEN), CONST(DOMID_COW),
    CONST(DOMID_INVALID), CONST(DOMID_IDLE),

    // elfnote.h, features.h
    CONST(XEN_ELFNOTE_INFO), CONST(XEN_ELFNOTE_ENTRY), CONST(XEN_ELFNOTE_HYPERCALL_PAGE), CONST(XEN_ELFNOTE_VIRT_BASE),
    CONST(XEN_ELFNOTE_PADDR_OFFSET), CONST(XEN_ELFNOTE_XEN_VERSION), CONST(XEN_ELFNOTE_GUEST_OS),
    CONST(XEN_ELFNOTE_GUEST_VERSION), CONST(XEN_ELFNOTE_LOADER), CONST(XEN_ELFNOTE_PAE_MODE),
    CONST(XEN_ELFNOTE_FEATURES), CONST(XEN_ELFNOTE_BSD_SYMTAB), CONST(XEN_ELFNOTE_HV_START_LOW),
    CONST(XEN_ELFNOTE_L1_MFN_VALID), CONST(XEN_ELFNOTE_SUSPEND_CANCEL), CONST(XEN_ELFNOTE_INIT_P2M),
    CONST(XEN_ELFNOTE_MOD_START_PFN), CONST(XEN_ELFNOTE_SUPPORTED_FEATURES), CONST(XEN_ELFNOTE_PHYS32_ENTRY),
    CONST(XEN_ELFNOTE_MAX), CONST(XEN_ELFNOTE_CRASH_INFO), CONST(XEN_ELFNOTE_CRASH_REGS),
    CONST(XEN_ELFNOTE_DUMPCORE_NONE), CONST(XEN_ELFNOTE_DUMPCORE_HEADER), CONST(XEN_ELFNOTE_DUMPCORE_XEN_VERSION),
    CONST(XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION),
    CONST(XENFEAT_writable_page_tables), CONST(XENFEAT_writable_descriptor_tables),
    CONST(XENFEAT_auto_translated_physmap), CONST(XENFEAT_supervisor_mode_kernel), CONST(XENFEAT_pae_pgdir_above_4gb),
    CONST(XENFEAT_mmu_pt_update_preserve_ad), CONST(XENFEAT_highmem_assist), CONST(XENFEAT_gnttab_map_avail_bits),
    CONST(XENFEAT_hvm_callback_vector), CONST(XENFEAT_hvm_safe_pvclock), CONST(XENFEAT_hvm_pirqs), CONST(XENFEAT_dom0),
    CONST(XENFEAT_memory_op_vnode_supported), CONST(XENFEAT_ARM_SMCCC_supported),
    CONST(XENFEAT_linux_rsdp_unrestricted), CONST(XENFEAT_not_direct_mapped), CONST(XENFEAT_direct_mapped),
    // Linux's xen/sys/evtchn.h and gntalloc.h (as Xen ships them): LinuxXenPlatform's ioctls.
    CONST(IOCTL_EVTCHN_BIND_INTERDOMAIN), CONST(IOCTL_EVTCHN_BIND_UNBOUND_PORT), CONST(IOCTL_EVTCHN_UNBIND),
    CONST(IOCTL_EVTCHN_NOTIFY), CONST(IOCTL_GNTALLOC_ALLOC_GREF), CONST(IOCTL_GNTALLOC_DEALLOC_GREF),
    CONST(GNTALLOC_FLAG_WRITABLE),
    OFF(ioctl_gntalloc_alloc_gref, domid), OFF(ioctl_gntalloc_alloc_gref, flags), OFF(ioctl_gntalloc_alloc_gref, count),
    OFF(ioctl_gntalloc_alloc_gref, index), OFF(ioctl_gntalloc_alloc_gref, gref_ids),
    OFF(ioctl_gntalloc_dealloc_gref, index), OFF(ioctl_gntalloc_dealloc_gref, count), SIZE(ioctl_gntalloc_dealloc_gref),
    SIZE(ioctl_evtchn_bind_interdomain), SIZE(ioctl_evtchn_bind_unbound_port), SIZE(ioctl_evtchn_notify),
};

const cxr_fact *cxr_abi_facts(size_t *count) {
    *count = sizeof(facts) / sizeof(facts[0]);
    return facts;
}

const char *cxr_xsd_error(size_t index, int *errnum) {
    if (index >= sizeof(xsd_errors) / sizeof(xsd_errors[0])) return NULL;
    *errnum = xsd_errors[index].errnum;
    return xsd_errors[index].errstring;
}

// ---- ring.h-driven blkif ends ----------------------------------------------------------

struct cxr_blk_front { blkif_front_ring_t ring; };
struct cxr_blk_back { blkif_back_ring_t ring; };

cxr_blk_front *cxr_blk_front_new(void *memory, size_t bytes, int initialize, uint32_t start) {
    cxr_blk_front *front = calloc(1, sizeof(*front));
    blkif_sring_t *sring = memory;
    if (initialize) {
        SHARED_RING_INIT(sring);
        sring->req_prod = sring->rsp_prod = start;
        sring->req_event = sring->rsp_event = start + 1;
    }
    FRONT_RING_ATTACH(&front->ring, sring, start, bytes);
    return front;
}

void cxr_blk_front_free(cxr_blk_front *front) { free(front); }

uint32_t cxr_blk_front_free_requests(cxr_blk_front *front) { return RING_FREE_REQUESTS(&front->ring); }

int cxr_blk_front_put(cxr_blk_front *front, uint64_t id, uint64_t sector, uint8_t nseg) {
    if (RING_FULL(&front->ring)) return 0;
    blkif_request_t *req = RING_GET_REQUEST(&front->ring, front->ring.req_prod_pvt);
    req->operation = BLKIF_OP_READ;
    req->nr_segments = nseg;
    req->handle = 51712;
    req->id = id;
    req->sector_number = sector;
    for (uint8_t i = 0; i < nseg; i++) {
        req->seg[i].gref = (grant_ref_t)(id + i);
        req->seg[i].first_sect = 0;
        req->seg[i].last_sect = 7;
    }
    front->ring.req_prod_pvt++;
    return 1;
}

int cxr_blk_front_push(cxr_blk_front *front) {
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front->ring, notify);
    return notify;
}

int cxr_blk_front_take(cxr_blk_front *front, uint64_t *id, uint8_t *operation, int16_t *status) {
    if (!RING_HAS_UNCONSUMED_RESPONSES(&front->ring)) return 0;
    xen_rmb();
    blkif_response_t rsp;
    RING_COPY_RESPONSE(&front->ring, front->ring.rsp_cons, &rsp);
    front->ring.rsp_cons++;
    *id = rsp.id;
    *operation = rsp.operation;
    *status = rsp.status;
    return 1;
}

int cxr_blk_front_final_check(cxr_blk_front *front) {
    int more;
    RING_FINAL_CHECK_FOR_RESPONSES(&front->ring, more);
    return more;
}

cxr_blk_back *cxr_blk_back_new(void *memory, size_t bytes, uint32_t start) {
    cxr_blk_back *back = calloc(1, sizeof(*back));
    BACK_RING_ATTACH(&back->ring, (blkif_sring_t *)memory, start, bytes);
    return back;
}

void cxr_blk_back_free(cxr_blk_back *back) { free(back); }

int cxr_blk_back_take(cxr_blk_back *back, uint64_t *id, uint64_t *sector, uint8_t *nseg, uint32_t *first_gref) {
    if (!RING_HAS_UNCONSUMED_REQUESTS(&back->ring)) return 0;
    xen_rmb();
    blkif_request_t req;
    RING_COPY_REQUEST(&back->ring, back->ring.req_cons, &req);
    back->ring.req_cons++;
    *id = req.id;
    *sector = req.sector_number;
    *nseg = req.nr_segments;
    *first_gref = req.nr_segments > 0 ? req.seg[0].gref : 0;
    return 1;
}

void cxr_blk_back_respond(cxr_blk_back *back, uint64_t id, uint8_t operation, int16_t status) {
    blkif_response_t *rsp = RING_GET_RESPONSE(&back->ring, back->ring.rsp_prod_pvt);
    rsp->id = id;
    rsp->operation = operation;
    rsp->status = status;
    back->ring.rsp_prod_pvt++;
}

int cxr_blk_back_push(cxr_blk_back *back) {
    int notify;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back->ring, notify);
    return notify;
}

int cxr_blk_back_final_check(cxr_blk_back *back) {
    int more;
    RING_FINAL_CHECK_FOR_REQUESTS(&back->ring, more);
    return more;
}
