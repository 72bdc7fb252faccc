// swift-tools-version:6.1
import PackageDescription

/// PVKit: Xen paravirtualisation in Swift. The module map and who imports what is in README.md.
let strictSwift: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "PVKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "XenABI", targets: ["XenABI"]),
        .library(name: "XenRing", targets: ["XenRing"]),
        .library(name: "SharedMemory", targets: ["SharedMemory"]),
        .executable(name: "ring-bench", targets: ["ring-bench"]),
        .executable(name: "ring-bench-c", targets: ["ring-bench-c"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // Pure wire formats and constants of Xen's public ABI. No I/O, no dependencies.
        .target(name: "XenABI", swiftSettings: strictSwift),
        // The generic shared ring (io/ring.h) over raw shared memory.
        .target(
            name: "XenRing",
            dependencies: ["XenABI", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strictSwift),
        // Linux calls that Glibc's module lacks (memfd_create, eventfd).
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        // memfd-backed shared regions and eventfd notifications.
        .target(name: "SharedMemory", dependencies: ["CLinux"], swiftSettings: strictSwift),

        // Benchmarks: the Swift ring against a C harness built on the real ring.h.
        .executableTarget(
            name: "ring-bench",
            dependencies: [
                "XenABI", "XenRing", "SharedMemory",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/RingBench",
            swiftSettings: strictSwift),
        .executableTarget(name: "ring-bench-c", path: "Benchmarks/RingBenchC"),

        // C reference compiled against /usr/include/xen (libxen-dev): layout facts and ring.h.
        .target(name: "CXenReference", path: "Tests/CXenReference"),
        .testTarget(
            name: "XenABITests",
            dependencies: ["XenABI", "CXenReference"],
            swiftSettings: strictSwift),
        .testTarget(
            name: "XenRingTests",
            dependencies: ["XenABI", "XenRing", "SharedMemory", "CXenReference"],
            swiftSettings: strictSwift),
    ]
)
