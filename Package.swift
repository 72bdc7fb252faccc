// swift-tools-version:6.1
import PackageDescription

/// PVKit: Xen paravirtualisation in Swift. The module map and who imports what is in README.md.
/// `PVKIT_WARNINGS_AS_ERRORS=1` (set by `make test`, so in CI) makes every warning in PVKit's own
/// targets an error; dependencies are not affected.
let strictSwift: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
] + (Context.environment["PVKIT_WARNINGS_AS_ERRORS"] == "1" ? [.unsafeFlags(["-warnings-as-errors"])] : [])
/// Test targets: Swift 6 mode; warnings stay warnings (the testing macros' expansions warn).
let testSwift: [SwiftSetting] = [.swiftLanguageMode(.v6)]
/// The data paths (rings, blkfront/netfront, pvhost's backends) in release builds without the
/// run-time exclusivity checks: on the packet path they were 10–14% of all CPU time
/// (swift_beginAccess/endAccess on class-held ring state, measured with perf). Debug builds,
/// and so every test, keep them; the static checks stay on everywhere.
let dataPath: [SwiftSetting] = strictSwift + [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "PVKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "XenABI", targets: ["XenABI"]),
        .library(name: "XenRing", targets: ["XenRing"]),
        .library(name: "PVSystem", targets: ["PVSystem"]),
        .library(name: "XenStoreWire", targets: ["XenStoreWire"]),
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenStoredCore", targets: ["XenStoredCore"]),
        .library(name: "XenGrants", targets: ["XenGrants"]),
        .library(name: "XenBus", targets: ["XenBus"]),
        .library(name: "PVPlatform", targets: ["PVPlatform"]),
        .library(name: "BlockFront", targets: ["BlockFront"]),
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
        .library(name: "NBDServer", targets: ["NBDServer"]),
        .library(name: "NetFront", targets: ["NetFront"]),
        .library(name: "PacketOffload", targets: ["PacketOffload"]),
        .library(name: "PacketTap", targets: ["PacketTap"]),
        .library(name: "KernelAudit", targets: ["KernelAudit"]),
        .executable(name: "pvcheck", targets: ["pvcheck"]),
        .executable(name: "pvhost", targets: ["pvhost"]),
        .executable(name: "pvstore", targets: ["pvstore"]),
        .executable(name: "pvblk", targets: ["pvblk"]),
        .executable(name: "pvnet", targets: ["pvnet"]),
        .executable(name: "ring-bench", targets: ["ring-bench"]),
        .executable(name: "ring-bench-c", targets: ["ring-bench-c"]),
        .executable(name: "pvcheck-bench", targets: ["pvcheck-bench"]),
        .executable(name: "xenstore-bench", targets: ["xenstore-bench"]),
        .executable(name: "pvhost-bench", targets: ["pvhost-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // Pure wire formats and constants of Xen's public ABI. No I/O, no dependencies.
        .target(name: "XenABI", swiftSettings: strictSwift),
        // The generic shared ring (io/ring.h) over raw shared memory.
        .target(
            name: "XenRing",
            dependencies: ["XenABI", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strictSwift),
        // xs_wire (pure): paths, requests and replies, framing, the ring page's layout and indexes.
        .target(
            name: "XenStoreWire",
            dependencies: ["XenABI", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strictSwift),
        // XenStore: the async client and its transports (socket, /dev/xen/xenbus, a domain's
        // ring page); re-exports XenStoreWire.
        .target(
            name: "XenStore",
            dependencies: ["XenABI", "XenStoreWire", "PVSystem", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strictSwift),
        // xenstored's core (pure): the tree, permissions, quotas, transactions, watches and the
        // per-connection output queue; requests in, replies and events out.
        .target(name: "XenStoredCore", dependencies: ["XenABI", "XenStoreWire"], swiftSettings: strictSwift),
        // The XenBus frontend lifecycle: a pure state machine and the driver that runs it on XenStore.
        .target(name: "XenBus", dependencies: ["XenABI", "XenStore", "PVSystem"], swiftSettings: strictSwift),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"], swiftSettings: testSwift),
        .testTarget(name: "BlockFrontTests", dependencies: ["BlockFront", "XenABI", "PVSystem"], swiftSettings: testSwift),
        // netfront: Ethernet frames over Xen's PV network protocol.
        .target(name: "NetFront", dependencies: ["XenABI", "XenRing", "XenStore", "XenBus", "PVPlatform", "PVSystem", "PacketOffload", "PacketTap",
                                                .product(name: "Atomics", package: "swift-atomics"), .product(name: "DequeModule", package: "swift-collections")], swiftSettings: dataPath),
        .testTarget(name: "NetFrontTests", dependencies: ["NetFront", "XenABI"], swiftSettings: testSwift),
        .testTarget(name: "XenBusTests", dependencies: ["XenBus", "XenABI"], swiftSettings: testSwift),
        // Grant table v1 in shared memory: the granting guest's and the hypervisor's halves.
        .target(
            name: "XenGrants",
            dependencies: ["XenABI", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strictSwift),
        // Offloads done in software (checksums, TCP segmentation) and TAP devices with Linux's
        // offload header: shared by pvhost's netback and NetFront's TAP bridge.
        .target(name: "PacketOffload", dependencies: ["XenABI"], swiftSettings: dataPath),
        // Packets in and out of a TAP device (PVSystem's descriptor, PacketOffload's framing).
        .target(name: "PacketTap", dependencies: ["PacketOffload", "PVSystem", "XenABI", .product(name: "Atomics", package: "swift-atomics")], swiftSettings: dataPath),
        // pvhost's engine: so far the xenstored core (tree, permissions, watches), sans I/O.
        .target(
            name: "PVHost",
            dependencies: ["XenABI", "XenRing", "XenStore", "XenStoredCore", "XenGrants", "PVSystem", "PVHostProtocol", "PacketOffload", "PacketTap",
                           .product(name: "Logging", package: "swift-log"), .product(name: "DequeModule", package: "swift-collections"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: dataPath),
        // The NBD protocol (pure): the server's handshake and request checks, replies.
        .target(name: "NBDProtocol", swiftSettings: strictSwift),
        // An NBD server exporting a BlockFront disk (UNIX socket or loopback TCP).
        .target(
            name: "NBDServer",
            dependencies: ["NBDProtocol", "BlockFront", "PVSystem", "XenABI", .product(name: "Logging", package: "swift-log"),
                           .product(name: "DequeModule", package: "swift-collections"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: strictSwift),
        // blkfront: a virtual disk over Xen's PV block protocol.
        .target(
            name: "BlockFront",
            dependencies: ["XenABI", "XenRing", "XenStore", "XenBus", "PVPlatform", "PVSystem",
                           .product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: dataPath),
        // pvhost's control channel messages (guest processes and tools ↔ pvhost).
        .target(name: "PVHostProtocol", swiftSettings: strictSwift),
        // What a frontend needs from "the hypervisor"; `ReferencePlatform` is a guest of pvhost.
        .target(
            name: "PVPlatform",
            dependencies: ["XenABI", "XenStore", "XenGrants", "PVSystem", "PVHostProtocol", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strictSwift),
        // Linux calls that Glibc's module lacks (memfd_create, eventfd).
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        // The system floor: the only Swift module that calls libc for descriptors, epoll, eventfd,
        // memfd, mmap, ioctls, signals and the clock (on swift-system's FileDescriptor and
        // Errno), and the event loop every ring, transport, daemon and backend runs on.
        .target(name: "PVSystem", dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system"),
                                                 .product(name: "DequeModule", package: "swift-collections")],
                swiftSettings: dataPath),

        // C libraries for pvcheck: compressors, libelf, libkmod.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLZMA", path: "Sources/CLZMA", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CBzip2", path: "Sources/CBzip2", providers: [.apt(["libbz2-dev"])]),
        .systemLibrary(name: "CLZ4", path: "Sources/CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CLZO", path: "Sources/CLZO", pkgConfig: "lzo2", providers: [.apt(["liblzo2-dev"])]),
        .systemLibrary(name: "CLibElf", path: "Sources/CLibElf", pkgConfig: "libelf", providers: [.apt(["libelf-dev"])]),
        .systemLibrary(name: "CKmod", path: "Sources/CKmod", pkgConfig: "libkmod", providers: [.apt(["libkmod-dev"])]),
        .systemLibrary(name: "CBlkid", path: "Sources/CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CQcow", path: "Sources/CQcow", pkgConfig: "libqcow", providers: [.apt(["libqcow-dev"])]),
        .systemLibrary(name: "CVmdk", path: "Sources/CVmdk", pkgConfig: "libvmdk", providers: [.apt(["libvmdk-dev", "libbfio-dev"])]),
        .systemLibrary(name: "CVhdi", path: "Sources/CVhdi", pkgConfig: "libvhdi", providers: [.apt(["libvhdi-dev"])]),
        // libext2fs reading through a callback (an io_manager), so an ext4 volume in a qcow2 image reads like one in a raw file.
        .target(name: "CExt2fs", path: "Sources/CExt2fs", linkerSettings: [.linkedLibrary("ext2fs"), .linkedLibrary("com_err")]),
        // C: the per-thread "what I was doing" a crash prints (signal handlers chained to Swift's backtracer).
        .target(name: "CCrashContext", path: "Sources/CCrashContext"),
        // A guest's files: a host directory or a file system inside a raw/qcow2 disk image, links resolved inside the guest.
        .target(
            name: "GuestFiles",
            dependencies: ["PVSystem", "CBlkid", "CQcow", "CVmdk", "CVhdi", "CExt2fs", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strictSwift),
        // pvcheck's engine: image detection, decompression, Xen notes, config, modules, verdict.
        .target(
            name: "KernelAudit",
            dependencies: [
                "XenABI", "PVSystem", "GuestFiles", "CCrashContext", "CLinux", "CZlib", "CLZMA", "CZstd", "CBzip2", "CLZ4", "CLZO", "CLibElf", "CKmod",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift),
        .executableTarget(
            name: "pvhost",
            dependencies: [
                "PVHost", "PVHostProtocol", "PVPlatform", "XenStore", "XenStoredCore", "PVSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSwift),
        .executableTarget(
            name: "pvstore",
            dependencies: ["XenStore", "PVPlatform", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strictSwift),
        .executableTarget(
            name: "pvblk",
            dependencies: ["BlockFront", "NBDServer", "PVPlatform", "PVSystem", "XenStore", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Histogram", package: "hdrhistogram-swift"), .product(name: "Logging", package: "swift-log"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: strictSwift),
        .executableTarget(
            name: "pvnet",
            dependencies: ["NetFront", "PVPlatform", "XenABI", "PVSystem", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strictSwift),
        .executableTarget(
            name: "pvcheck",
            dependencies: [
                "KernelAudit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift),

        // Benchmarks: the Swift ring against a C harness built on the real ring.h.
        .executableTarget(
            name: "ring-bench",
            dependencies: [
                "XenABI", "XenRing", "PVSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/RingBench",
            swiftSettings: strictSwift),
        .executableTarget(name: "ring-bench-c", path: "Benchmarks/RingBenchC"),
        // pvcheck against xz -dc / zstd -dc on real kernels.
        // libFuzzer targets, one per input surface (`make fuzz`); without -DFUZZING a corpus replayer.
        .executableTarget(
            name: "pvkit-fuzz", dependencies: ["KernelAudit", "GuestFiles", "XenABI", "XenStoreWire", "XenStoredCore", "PVHostProtocol", "XenBus", "NBDProtocol"],
            path: "Tests/Fuzz", exclude: ["xs-wire.dict"],
            swiftSettings: strictSwift),
        .executableTarget(name: "pvcheck-bench", dependencies: ["KernelAudit"], path: "Benchmarks/PVCheckBench", swiftSettings: strictSwift),
        // Our xenstored against Xen's C xenstored, same client load, side by side.
        .executableTarget(name: "xenstore-bench", dependencies: ["XenStore", "XenABI"], path: "Benchmarks/XenStoreBench", swiftSettings: strictSwift),
        // pvhost's grant and event-channel operations; event round trip against bare eventfds.
        .executableTarget(
            name: "pvhost-bench",
            dependencies: ["PVHost", "XenGrants", "PVSystem", "XenABI", "BlockFront", "NetFront", "PVPlatform", "XenStore"],
            path: "Benchmarks/PVHostBench",
            swiftSettings: strictSwift),

        // What several test targets share: processes started, waited for and stopped with a
        // time limit, without blocking a thread.
        .testTarget(name: "RepositoryTests", swiftSettings: testSwift),
        .target(name: "TestSupport", dependencies: ["PVSystem"], path: "Tests/TestSupport", swiftSettings: testSwift),
        .testTarget(name: "PVSystemTests", dependencies: ["PVSystem", "TestSupport"], swiftSettings: testSwift),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "XenABI", "PVSystem"], swiftSettings: testSwift),
        .testTarget(name: "XenStoredCoreTests", dependencies: ["XenStoredCore", "XenStoreWire", "XenABI"], swiftSettings: testSwift),
        .testTarget(name: "PVHostTests", dependencies: ["TestSupport", "PVHost", "PVPlatform", "PVHostProtocol", "BlockFront", "NetFront", "PacketOffload", "XenStore", "XenStoredCore", "XenABI", "XenGrants", "XenBus", "PVSystem"], swiftSettings: testSwift),
        .testTarget(
            name: "KernelAuditTests",
            dependencies: ["KernelAudit", "GuestFiles", "XenABI", "PVSystem", "TestSupport"],
            swiftSettings: testSwift),

        // C reference compiled against /usr/include/xen (libxen-dev): layout facts and ring.h.
        .target(name: "CXenReference", path: "Tests/CXenReference"),
        .testTarget(
            name: "XenABITests",
            dependencies: ["XenABI", "CXenReference", "PVSystem", "TestSupport"],
            swiftSettings: testSwift),
        .testTarget(
            name: "XenRingTests",
            dependencies: ["XenABI", "XenRing", "PVSystem", "CXenReference", "TestSupport"],
            swiftSettings: testSwift),
    ]
)
