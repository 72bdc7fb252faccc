/// Event channels, `xen/include/public/event_channel.h`.
public enum EventChannelABI {
    /// Hypercall commands. C: `EVTCHNOP_*`.
    public enum Operation: UInt32, Sendable, CaseIterable {
        case bindInterdomain = 0, bindVirq = 1, bindPirq = 2, close = 3, send = 4, status = 5, allocUnbound = 6,
            bindIPI = 7, bindVCPU = 8, unmask = 9, reset = 10, initControl = 11, expandArray = 12, setPriority = 13
    }

    /// Port states. C: `EVTCHNSTAT_*`.
    public enum PortStatus: UInt32, Sendable, CaseIterable {
        case closed = 0, unbound = 1, interdomain = 2, pirq = 3, virq = 4, ipi = 5
    }

    /// `struct evtchn_alloc_unbound` (8 bytes): dom u16 @0, remote_dom u16 @2, port u32 @4 (out).
    public static let allocUnboundSize = 8, allocUnboundDom = 0, allocUnboundRemoteDom = 2, allocUnboundPort = 4
    /// `struct evtchn_bind_interdomain` (12 bytes): remote_dom u16 @0, remote_port u32 @4, local_port u32 @8 (out).
    public static let bindInterdomainSize = 12, bindInterdomainRemoteDom = 0, bindInterdomainRemotePort = 4,
        bindInterdomainLocalPort = 8
    /// `struct evtchn_send`, `evtchn_close`, `evtchn_unmask` (4 bytes): port u32 @0.
    public static let portArgumentSize = 4
    /// The 2-level ABI's port limit on a 64-bit guest. C: `EVTCHN_2L_NR_CHANNELS`.
    public static let twoLevelPortCount = 64 * 64
}
