// swift-tools-version: 6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "microvm",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "FirecrackerAPI", targets: ["FirecrackerAPI"]),
        .library(name: "MicroVMHost", targets: ["MicroVMHost"]),
        .library(name: "MicroVM", targets: ["MicroVM"]),
        .executable(name: "microvm", targets: ["MicroVMCLI"]),
        .executable(name: "microvm-bench", targets: ["MicroVMBench"]),
        .executable(name: "microvm-monitor", targets: ["MicroVMMonitor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    ],
    targets: [
        // Typed client for Firecracker's HTTP API. Knows nothing about the host.
        .target(
            name: "FirecrackerAPI",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The few syscalls Swift cannot import directly (prctl, ioctl constants, pidfd).
        .target(name: "CMicroVMSys"),
        // Host mechanisms: TAP devices, jail, cgroups, namespaces.
        .target(
            name: "MicroVMHost",
            dependencies: [
                "CMicroVMSys",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Network topologies in namespaces of their own, a fake guest on a TAP and packet
        // counters: shared by the network tests and the network benchmark.
        .target(
            name: "NetworkTestbed",
            dependencies: [
                "MicroVMHost",
                "CMicroVMSys",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The driver: launching, supervising and tearing down VMMs.
        .target(
            name: "MicroVM",
            dependencies: [
                "FirecrackerAPI",
                "MicroVMHost",
                "CMicroVMSys",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // The per-VM monitor of detached VMs: one per VM for its whole life, so it links
        // nothing but the C shim and the Swift runtime, statically (measured in BENCHMARKS.md).
        .executableTarget(
            name: "MicroVMMonitor",
            dependencies: ["CMicroVMSys"],
            swiftSettings: strict,
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]
        ),
        .executableTarget(
            name: "MicroVMCLI",
            dependencies: [
                "MicroVM",
                "FirecrackerAPI",
                "MicroVMHost",
                "CMicroVMSys",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "MicroVMBench",
            dependencies: [
                "MicroVM",
                "MicroVMHost",
                "NetworkTestbed",
                "FirecrackerAPI",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "FirecrackerAPITests",
            dependencies: [
                "FirecrackerAPI",
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MicroVMHostTests",
            dependencies: [
                "MicroVMHost",
                "NetworkTestbed",
                "CMicroVMSys",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MicroVMTests",
            dependencies: [
                "MicroVM",
                "FirecrackerAPI",
                "MicroVMHost",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // The command line's own logic that needs no VM (formatting, log tails).
        .testTarget(
            name: "MicroVMCLITests",
            dependencies: ["MicroVMCLI"],
            swiftSettings: strict
        ),
        // A driver process the end-to-end tests kill to prove that VMs outlive their driver.
        .executableTarget(
            name: "MicroVMTestDriver",
            dependencies: [
                "MicroVM",
                "MicroVMHost",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/MicroVMTestDriver",
            swiftSettings: strict
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "MicroVM",
                "FirecrackerAPI",
                "MicroVMHost",
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
    ]
)
