import PVSystem
import XenABI

/// The Swift side's value for every fact the C reference reports, under the same name.
/// A fact the C side reports and this table lacks fails the ABI test, as does a mismatch.
func swiftABIFacts() -> [String: Int64] {
    var facts: [String: Int64] = [:]
    func put(_ name: String, _ value: some BinaryInteger) { facts[name] = Int64(value) }

    // Linux's xen/sys/evtchn.h and gntalloc.h: LinuxXenPlatform's ioctls.
    typealias IO = XenDeviceIOCTL
    put("IOCTL_EVTCHN_BIND_INTERDOMAIN", IO.bindInterdomain)
    put("IOCTL_EVTCHN_BIND_UNBOUND_PORT", IO.bindUnboundPort)
    put("IOCTL_EVTCHN_UNBIND", IO.unbind)
    put("IOCTL_EVTCHN_NOTIFY", IO.notify)
    put("IOCTL_GNTALLOC_ALLOC_GREF", IO.allocGref)
    put("IOCTL_GNTALLOC_DEALLOC_GREF", IO.deallocGref)
    put("GNTALLOC_FLAG_WRITABLE", IO.flagWritable)
    put("ioctl_gntalloc_alloc_gref.domid", IO.allocDomid)
    put("ioctl_gntalloc_alloc_gref.flags", IO.allocFlags)
    put("ioctl_gntalloc_alloc_gref.count", IO.allocCount)
    put("ioctl_gntalloc_alloc_gref.index", IO.allocIndex)
    put("ioctl_gntalloc_alloc_gref.gref_ids", IO.allocHeader)
    put("ioctl_gntalloc_dealloc_gref.index", IO.deallocIndex)
    put("ioctl_gntalloc_dealloc_gref.count", IO.deallocCount)
    put("sizeof(ioctl_gntalloc_dealloc_gref)", IO.deallocSize)
    put("sizeof(ioctl_evtchn_bind_interdomain)", IO.bindInterdomainSize)
    put("sizeof(ioctl_evtchn_bind_unbound_port)", IO.bindUnboundSize)
    put("sizeof(ioctl_evtchn_notify)", IO.notifySize)

    // io/ring.h
    put("blkif_sring.req_prod", SharedRingHeader.requestProducer)
    put("blkif_sring.req_event", SharedRingHeader.requestEvent)
    put("blkif_sring.rsp_prod", SharedRingHeader.responseProducer)
    put("blkif_sring.rsp_event", SharedRingHeader.responseEvent)
    put("blkif_sring.pvt", SharedRingHeader.privateArea)
    put("blkif_sring.__pad", 20)
    put("blkif_sring.ring", SharedRingHeader.size)
    let rings: [(String, Int)] = [
        ("blkif", BlkifRing().slotSize), ("netif_tx", NetifTxRing().slotSize),
        ("netif_rx", NetifRxRing().slotSize), ("xen_netif_ctrl", NetifControlRing().slotSize)
    ]
    for (tag, slotSize) in rings {
        for order in 0...4 {
            put("ring.\(tag).order\(order)", RingGeometry(slotSize: slotSize, pageOrder: order)!.entryCount)
        }
    }
    put("sizeof(union blkif_sring_entry)", BlkifRing().slotSize)
    put("sizeof(union netif_tx_sring_entry)", NetifTxRing().slotSize)
    put("sizeof(union netif_rx_sring_entry)", NetifRxRing().slotSize)
    put("sizeof(union xen_netif_ctrl_sring_entry)", NetifControlRing().slotSize)

    // io/blkif.h (native x86-64 layout; x86-32 is checked by compiling for i386)
    let b = BlkifLayout.x86_64
    put("sizeof(blkif_request_segment)", BlkifSegment.wireSize)
    put("blkif_request_segment.gref", BlkifSegment.grefOffset)
    put("blkif_request_segment.first_sect", BlkifSegment.firstSectorOffset)
    put("blkif_request_segment.last_sect", BlkifSegment.lastSectorOffset)
    put("sizeof(blkif_request)", b.requestSize)
    put("blkif_request.operation", b.requestOperation)
    put("blkif_request.nr_segments", b.requestSegmentCount)
    put("blkif_request.handle", b.requestHandle)
    put("blkif_request.id", b.requestID)
    put("blkif_request.sector_number", b.requestSector)
    put("blkif_request.seg", b.requestSegments)
    put("sizeof(blkif_request_discard)", b.discardSize)
    put("blkif_request_discard.flag", b.discardFlag)
    put("blkif_request_discard.handle", b.discardHandle)
    put("blkif_request_discard.id", b.discardID)
    put("blkif_request_discard.sector_number", b.discardSector)
    put("blkif_request_discard.nr_sectors", b.discardSectorCount)
    put("sizeof(blkif_request_indirect)", b.indirectSize)
    put("blkif_request_indirect.indirect_op", b.indirectOperation)
    put("blkif_request_indirect.nr_segments", b.indirectSegmentCount)
    put("blkif_request_indirect.id", b.indirectID)
    put("blkif_request_indirect.sector_number", b.indirectSector)
    put("blkif_request_indirect.handle", b.indirectHandle)
    put("blkif_request_indirect.indirect_grefs", b.indirectGrants)
    put("sizeof(blkif_response)", b.responseSize)
    put("blkif_response.id", b.responseID)
    put("blkif_response.operation", b.responseOperation)
    put("blkif_response.status", b.responseStatus)
    for op in BlkifOperation.allCases {
        let name =
            switch op {
            case .read: "READ"
            case .write: "WRITE"
            case .writeBarrier: "WRITE_BARRIER"
            case .flushDiskCache: "FLUSH_DISKCACHE"
            case .reserved1: "RESERVED_1"
            case .discard: "DISCARD"
            case .indirect: "INDIRECT"
            }
        put("BLKIF_OP_\(name)", op.rawValue)
    }
    put("BLKIF_MAX_SEGMENTS_PER_REQUEST", Blkif.maxSegmentsPerRequest)
    put("BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", Blkif.maxIndirectPagesPerRequest)
    put("BLKIF_RSP_OKAY", BlkifStatus.okay.rawValue)
    put("BLKIF_RSP_ERROR", BlkifStatus.error.rawValue)
    put("BLKIF_RSP_EOPNOTSUPP", BlkifStatus.notSupported.rawValue)
    put("BLKIF_DISCARD_SECURE", Blkif.discardSecureFlag)
    put("VDISK_CDROM", Blkif.vdiskCDROM)
    put("VDISK_REMOVABLE", Blkif.vdiskRemovable)
    put("VDISK_READONLY", Blkif.vdiskReadOnly)

    // io/netif.h
    put("sizeof(netif_tx_request)", NetifTxRequest.wireSize)
    put("netif_tx_request.gref", NetifTxRequest.grefOffset)
    put("netif_tx_request.offset", NetifTxRequest.offsetOffset)
    put("netif_tx_request.flags", NetifTxRequest.flagsOffset)
    put("netif_tx_request.id", NetifTxRequest.idOffset)
    put("netif_tx_request.size", NetifTxRequest.sizeOffset)
    put("sizeof(netif_tx_response)", NetifTxResponse.wireSize)
    put("netif_tx_response.id", NetifTxResponse.idOffset)
    put("netif_tx_response.status", NetifTxResponse.statusOffset)
    put("sizeof(netif_rx_request)", NetifRxRequest.wireSize)
    put("netif_rx_request.id", NetifRxRequest.idOffset)
    put("netif_rx_request.gref", NetifRxRequest.grefOffset)
    put("sizeof(netif_rx_response)", NetifRxResponse.wireSize)
    put("netif_rx_response.id", NetifRxResponse.idOffset)
    put("netif_rx_response.offset", NetifRxResponse.offsetOffset)
    put("netif_rx_response.flags", NetifRxResponse.flagsOffset)
    put("netif_rx_response.status", NetifRxResponse.statusOffset)
    put("sizeof(netif_extra_info)", NetifExtraInfo.wireSize)
    put("netif_extra_info.type", 0)
    put("netif_extra_info.flags", 1)
    put("netif_extra_info.u.gso.size", NetifExtraInfo.gsoSizeOffset)
    put("netif_extra_info.u.gso.type", NetifExtraInfo.gsoTypeOffset)
    put("netif_extra_info.u.gso.features", NetifExtraInfo.gsoFeaturesOffset)
    put("netif_extra_info.u.mcast.addr", NetifExtraInfo.multicastAddressOffset)
    put("netif_extra_info.u.hash.type", NetifExtraInfo.hashTypeOffset)
    put("netif_extra_info.u.hash.algorithm", NetifExtraInfo.hashAlgorithmOffset)
    put("netif_extra_info.u.hash.value", NetifExtraInfo.hashValueOffset)
    put("sizeof(xen_netif_ctrl_request)", NetifControlRequest.wireSize)
    put("xen_netif_ctrl_request.id", NetifControlRequest.idOffset)
    put("xen_netif_ctrl_request.type", NetifControlRequest.typeOffset)
    put("xen_netif_ctrl_request.data", NetifControlRequest.dataOffset)
    put("sizeof(xen_netif_ctrl_response)", NetifControlResponse.wireSize)
    put("xen_netif_ctrl_response.id", NetifControlResponse.idOffset)
    put("xen_netif_ctrl_response.type", NetifControlResponse.typeOffset)
    put("xen_netif_ctrl_response.status", NetifControlResponse.statusOffset)
    put("xen_netif_ctrl_response.data", NetifControlResponse.dataOffset)
    put("sizeof(xen_netif_gref)", NetifGref.wireSize)
    put("xen_netif_gref.ref", NetifGref.refOffset)
    put("xen_netif_gref.flags", NetifGref.flagsOffset)
    put("xen_netif_gref.status", NetifGref.statusOffset)
    let txFlags: [(String, NetTxFlags)] = [
        ("csum_blank", .checksumBlank), ("data_validated", .dataValidated),
        ("more_data", .moreData), ("extra_info", .extraInfo)
    ]
    for (name, flag) in txFlags {
        put("NETTXF_\(name)", flag.rawValue)
        put("_NETTXF_\(name)", flag.rawValue.trailingZeroBitCount)
    }
    let rxFlags: [(String, NetRxFlags)] = [
        ("data_validated", .dataValidated), ("csum_blank", .checksumBlank),
        ("more_data", .moreData), ("extra_info", .extraInfo), ("gso_prefix", .gsoPrefix)
    ]
    for (name, flag) in rxFlags { put("NETRXF_\(name)", flag.rawValue) }
    put("XEN_NETIF_EXTRA_TYPE_NONE", NetifExtraInfo.typeNone)
    put("XEN_NETIF_EXTRA_TYPE_GSO", NetifExtraInfo.typeGSO)
    put("XEN_NETIF_EXTRA_TYPE_MCAST_ADD", NetifExtraInfo.typeMulticastAdd)
    put("XEN_NETIF_EXTRA_TYPE_MCAST_DEL", NetifExtraInfo.typeMulticastDelete)
    put("XEN_NETIF_EXTRA_TYPE_HASH", NetifExtraInfo.typeHash)
    put("XEN_NETIF_EXTRA_TYPE_MAX", NetifExtraInfo.typeMax)
    put("XEN_NETIF_EXTRA_FLAG_MORE", NetifExtraInfo.flagMore)
    put("XEN_NETIF_GSO_TYPE_NONE", NetifGSOType.none.rawValue)
    put("XEN_NETIF_GSO_TYPE_TCPV4", NetifGSOType.tcpv4.rawValue)
    put("XEN_NETIF_GSO_TYPE_TCPV6", NetifGSOType.tcpv6.rawValue)
    put("NETIF_RSP_DROPPED", Netif.statusDropped)
    put("NETIF_RSP_ERROR", Netif.statusError)
    put("NETIF_RSP_OKAY", Netif.statusOkay)
    put("NETIF_RSP_NULL", Netif.statusNull)
    put("XEN_NETIF_NR_SLOTS_MIN", Netif.minimumSlotsPerPacket)
    put("XEN_NETIF_MAX_TX_SIZE", Netif.maxTxPacketSize)
    let controlTypes: [(String, NetifControlType)] = [
        ("INVALID", .invalid), ("GET_HASH_FLAGS", .getHashFlags), ("SET_HASH_FLAGS", .setHashFlags),
        ("SET_HASH_KEY", .setHashKey), ("GET_HASH_MAPPING_SIZE", .getHashMappingSize),
        ("SET_HASH_MAPPING_SIZE", .setHashMappingSize), ("SET_HASH_MAPPING", .setHashMapping),
        ("SET_HASH_ALGORITHM", .setHashAlgorithm), ("GET_GREF_MAPPING_SIZE", .getGrefMappingSize),
        ("ADD_GREF_MAPPING", .addGrefMapping), ("DEL_GREF_MAPPING", .delGrefMapping)
    ]
    for (name, type) in controlTypes { put("XEN_NETIF_CTRL_TYPE_\(name)", type.rawValue) }
    let controlStatuses: [(String, NetifControlStatus)] = [
        ("SUCCESS", .success), ("NOT_SUPPORTED", .notSupported), ("INVALID_PARAMETER", .invalidParameter),
        ("BUFFER_OVERFLOW", .bufferOverflow)
    ]
    for (name, status) in controlStatuses { put("XEN_NETIF_CTRL_STATUS_\(name)", status.rawValue) }
    put("XEN_NETIF_CTRL_HASH_ALGORITHM_NONE", NetifHash.algorithmNone)
    put("XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ", NetifHash.algorithmToeplitz)
    put("XEN_NETIF_CTRL_HASH_TYPE_IPV4", NetifHash.typeIPv4)
    put("XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP", NetifHash.typeIPv4TCP)
    put("XEN_NETIF_CTRL_HASH_TYPE_IPV6", NetifHash.typeIPv6)
    put("XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP", NetifHash.typeIPv6TCP)

    // io/xs_wire.h
    put("sizeof(xsd_sockmsg)", XsHeader.wireSize)
    put("xsd_sockmsg.type", XsHeader.typeOffset)
    put("xsd_sockmsg.req_id", XsHeader.requestIDOffset)
    put("xsd_sockmsg.tx_id", XsHeader.transactionIDOffset)
    put("xsd_sockmsg.len", XsHeader.lengthOffset)
    put("sizeof(xenstore_domain_interface)", XenstoreDomainInterface.size)
    put("xenstore_domain_interface.req", XenstoreDomainInterface.request)
    put("xenstore_domain_interface.rsp", XenstoreDomainInterface.response)
    put("xenstore_domain_interface.req_cons", XenstoreDomainInterface.requestConsumer)
    put("xenstore_domain_interface.req_prod", XenstoreDomainInterface.requestProducer)
    put("xenstore_domain_interface.rsp_cons", XenstoreDomainInterface.responseConsumer)
    put("xenstore_domain_interface.rsp_prod", XenstoreDomainInterface.responseProducer)
    put("xenstore_domain_interface.server_features", XenstoreDomainInterface.serverFeatures)
    put("xenstore_domain_interface.connection", XenstoreDomainInterface.connection)
    put("xenstore_domain_interface.error", XenstoreDomainInterface.error)
    for type in XsMessageType.allCases { put("XS_\(type)", type.rawValue) }
    put("XS_TYPE_COUNT", XsMessageType.typeCount)
    put("XENSTORE_RING_SIZE", XsWire.ringSize)
    put("XENSTORE_PAYLOAD_MAX", XsWire.payloadMax)
    put("XENSTORE_ABS_PATH_MAX", XsWire.absolutePathMax)
    put("XENSTORE_REL_PATH_MAX", XsWire.relativePathMax)
    put("XENSTORE_SERVER_FEATURE_RECONNECTION", XsWire.serverFeatureReconnection)
    put("XENSTORE_SERVER_FEATURE_ERROR", XsWire.serverFeatureError)
    put("XENSTORE_CONNECTED", XsWire.connected)
    put("XENSTORE_RECONNECT", XsWire.reconnecting)
    put("XENSTORE_ERROR_NONE", XsWire.errorNone)
    put("XENSTORE_ERROR_COMM", XsWire.errorCommunication)
    put("XENSTORE_ERROR_RINGIDX", XsWire.errorRingIndex)
    put("XENSTORE_ERROR_PROTO", XsWire.errorProtocol)

    // io/xenbus.h
    for state in XenbusState.allCases { put("XenbusState\(state)", state.rawValue) }

    // grant_table.h
    put("sizeof(grant_entry_v1)", GrantEntryV1.wireSize)
    put("grant_entry_v1.flags", GrantEntryV1.flagsOffset)
    put("grant_entry_v1.domid", GrantEntryV1.domidOffset)
    put("grant_entry_v1.frame", GrantEntryV1.frameOffset)
    put("sizeof(grant_entry_header)", GrantTable.v2HeaderSize)
    put("grant_entry_header.flags", 0)
    put("grant_entry_header.domid", 2)
    put("sizeof(union grant_entry_v2)", GrantTable.v2EntrySize)
    put("grant_entry_v2.full_page.frame", GrantTable.v2FullPageFrameOffset)
    let gtf: [(String, UInt16)] = [
        ("GTF_invalid", GrantFlags.invalid.rawValue), ("GTF_permit_access", GrantFlags.permitAccess.rawValue),
        ("GTF_accept_transfer", GrantFlags.acceptTransfer.rawValue), ("GTF_transitive", GrantFlags.transitive.rawValue),
        ("GTF_type_mask", GrantFlags.typeMask), ("GTF_readonly", GrantFlags.readOnly.rawValue),
        ("GTF_reading", GrantFlags.reading.rawValue), ("GTF_writing", GrantFlags.writing.rawValue),
        ("GTF_PWT", GrantFlags.pwt.rawValue), ("GTF_PCD", GrantFlags.pcd.rawValue), ("GTF_PAT", GrantFlags.pat.rawValue),
        ("GTF_sub_page", GrantFlags.subPage.rawValue),
        ("GTF_transfer_committed", GrantFlags.transferCommitted.rawValue),
        ("GTF_transfer_completed", GrantFlags.transferCompleted.rawValue)
    ]
    for (name, value) in gtf { put(name, value) }
    put("GNTTAB_NR_RESERVED_ENTRIES", GrantTable.reservedEntries)
    put("GNTTAB_RESERVED_CONSOLE", GrantTable.consoleRef.rawValue)
    put("GNTTAB_RESERVED_XENSTORE", GrantTable.xenstoreRef.rawValue)
    let ops: [(String, GrantTable.Operation)] = [
        ("map_grant_ref", .mapGrantRef), ("unmap_grant_ref", .unmapGrantRef), ("setup_table", .setupTable),
        ("dump_table", .dumpTable), ("transfer", .transfer), ("copy", .copy), ("query_size", .querySize),
        ("unmap_and_replace", .unmapAndReplace), ("set_version", .setVersion),
        ("get_status_frames", .getStatusFrames), ("get_version", .getVersion), ("swap_grant_ref", .swapGrantRef),
        ("cache_flush", .cacheFlush)
    ]
    for (name, op) in ops { put("GNTTABOP_\(name)", op.rawValue) }
    put("GNTMAP_device_map", GrantTable.mapDeviceMap)
    put("GNTMAP_host_map", GrantTable.mapHostMap)
    put("GNTMAP_readonly", GrantTable.mapReadOnly)
    put("GNTMAP_application_map", GrantTable.mapApplicationMap)
    put("GNTMAP_contains_pte", GrantTable.mapContainsPTE)
    put("GNTCOPY_source_gref", GrantTable.copySourceGref)
    put("GNTCOPY_dest_gref", GrantTable.copyDestinationGref)
    let statuses: [(String, GrantStatus)] = [
        ("okay", .okay), ("general_error", .generalError), ("bad_domain", .badDomain), ("bad_gntref", .badGntref),
        ("bad_handle", .badHandle), ("bad_virt_addr", .badVirtAddr), ("bad_dev_addr", .badDevAddr),
        ("no_device_space", .noDeviceSpace), ("permission_denied", .permissionDenied), ("bad_page", .badPage),
        ("bad_copy_arg", .badCopyArg), ("address_too_big", .addressTooBig), ("eagain", .eagain), ("no_space", .noSpace)
    ]
    for (name, status) in statuses { put("GNTST_\(name)", status.rawValue) }

    // event_channel.h, xen.h
    put("sizeof(evtchn_alloc_unbound)", EventChannelABI.allocUnboundSize)
    put("evtchn_alloc_unbound.dom", EventChannelABI.allocUnboundDom)
    put("evtchn_alloc_unbound.remote_dom", EventChannelABI.allocUnboundRemoteDom)
    put("evtchn_alloc_unbound.port", EventChannelABI.allocUnboundPort)
    put("sizeof(evtchn_bind_interdomain)", EventChannelABI.bindInterdomainSize)
    put("evtchn_bind_interdomain.remote_dom", EventChannelABI.bindInterdomainRemoteDom)
    put("evtchn_bind_interdomain.remote_port", EventChannelABI.bindInterdomainRemotePort)
    put("evtchn_bind_interdomain.local_port", EventChannelABI.bindInterdomainLocalPort)
    put("sizeof(evtchn_send)", EventChannelABI.portArgumentSize)
    put("sizeof(evtchn_close)", EventChannelABI.portArgumentSize)
    put("sizeof(evtchn_unmask)", EventChannelABI.portArgumentSize)
    let evtchnOps: [(String, EventChannelABI.Operation)] = [
        ("bind_interdomain", .bindInterdomain), ("bind_virq", .bindVirq), ("bind_pirq", .bindPirq), ("close", .close),
        ("send", .send), ("status", .status), ("alloc_unbound", .allocUnbound), ("bind_ipi", .bindIPI),
        ("bind_vcpu", .bindVCPU), ("unmask", .unmask), ("reset", .reset), ("init_control", .initControl),
        ("expand_array", .expandArray), ("set_priority", .setPriority)
    ]
    for (name, op) in evtchnOps { put("EVTCHNOP_\(name)", op.rawValue) }
    let portStatuses: [(String, EventChannelABI.PortStatus)] = [
        ("closed", .closed), ("unbound", .unbound), ("interdomain", .interdomain), ("pirq", .pirq), ("virq", .virq),
        ("ipi", .ipi)
    ]
    for (name, status) in portStatuses { put("EVTCHNSTAT_\(name)", status.rawValue) }
    put("EVTCHN_2L_NR_CHANNELS", EventChannelABI.twoLevelPortCount)
    put("DOMID_FIRST_RESERVED", DomainID.firstReserved.rawValue)
    put("DOMID_SELF", DomainID.selfDomain.rawValue)
    put("DOMID_IO", DomainID.io.rawValue)
    put("DOMID_XEN", DomainID.xen.rawValue)
    put("DOMID_COW", DomainID.cow.rawValue)
    put("DOMID_INVALID", DomainID.invalid.rawValue)
    put("DOMID_IDLE", DomainID.idle.rawValue)

    // elfnote.h, features.h (PHYS32_RELOC is newer than the 4.17 headers)
    for note in XenElfNoteType.allCases where note != .phys32Reloc { put("XEN_ELFNOTE_\(note)", note.rawValue) }
    put("XEN_ELFNOTE_MAX", XenElfNoteType.maxIn4_17)
    for feature in XenFeature.allCases where feature != .grantMapIdentity { put("XENFEAT_\(feature.name)", feature.rawValue) }
    return facts
}
