// swift-tools-version:6.0
import PackageDescription

// Module boxes follow DESIGN.md: pure logic (TOML, certificate profiles) apart from I/O shells
// (Store's file layer, Trust's system commands); OpenSSL is the only crypto library.
let package = Package(
    name: "Loupe",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "loupe", targets: ["loupe"]),
        .executable(name: "loupe-bench", targets: ["loupe-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
    ],
    targets: [
        .target(
            name: "COpenSSL",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .target(
            name: "CNetfilter",
            linkerSettings: [.linkedLibrary("netfilter_queue"), .linkedLibrary("mnl")]
        ),
        .target(name: "TOML"),
        .target(name: "Wire"),
        .target(name: "Policy", dependencies: ["TOML", "Wire"]),
        .target(name: "TLS", dependencies: ["COpenSSL", "Wire", .product(name: "NIOCore", package: "swift-nio")]),
        .target(name: "Platform"),
        .target(name: "Store", dependencies: ["TLS", "Platform"]),
        .target(name: "CA", dependencies: ["TLS", "Store", "TOML", "Wire"]),
        .target(name: "Proxy", dependencies: [
            "CA", "Policy", "TLS", "Wire", "Platform",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
        ]),
        .target(name: "Trust", dependencies: ["TLS", "Platform"]),
        .target(name: "Divert", dependencies: ["CNetfilter", "Policy", "Wire", "Platform"]),
        .target(name: "Agent", dependencies: [
            "Divert", "Proxy", "CA", "Store", "Policy", "TLS", "TOML", "Platform", "Wire",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .executableTarget(
            name: "loupe",
            dependencies: [
                "CA", "Store", "Trust", "TLS", "Policy", "TOML", "Wire", "Proxy", "Agent", "Divert", "Platform",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "loupe-bench", dependencies: ["CA", "Store", "TLS", "Policy", "Divert", "Proxy", .product(name: "NIOCore", package: "swift-nio")]),
        .target(name: "TestSupport", dependencies: ["Platform", "TLS", "Wire"], path: "Tests/TestSupport"),
        .testTarget(name: "TOMLTests", dependencies: ["TOML"]),
        .testTarget(name: "PolicyTests", dependencies: ["Policy", "TOML", "Wire", "TestSupport"]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "ProxyTests", dependencies: [
            "Proxy", "CA", "Store", "Policy", "TLS", "TestSupport",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
        ]),
        .testTarget(name: "TLSTests", dependencies: ["TLS", "TestSupport"]),
        .testTarget(name: "StoreTests", dependencies: ["Store", "TLS", "Platform", "TestSupport"]),
        .testTarget(name: "CATests", dependencies: ["CA", "Store", "TLS", "TestSupport"]),
        .testTarget(name: "DivertTests", dependencies: ["Divert", "Policy", "Wire", "TestSupport"]),
        .testTarget(name: "AgentTests", dependencies: ["Agent", "TOML", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(name: "TrustTests", dependencies: ["Trust", "TLS", "TestSupport"]),
        .testTarget(name: "IntegrationTests", dependencies: ["loupe", "TLS", "Store", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
