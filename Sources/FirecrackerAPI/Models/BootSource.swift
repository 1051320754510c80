/// The guest kernel to boot (`PUT /boot-source`, pre-boot only).
public struct BootSource: Codable, Sendable, Hashable {
    /// The kernel command line. Firecracker appends its own device arguments to it.
    public var bootArgs: String?
    public var initrdPath: String?
    /// Path of the kernel image as the VMM sees it (inside the jail when jailed).
    public var kernelImagePath: String

    public init(kernelImagePath: String, bootArgs: String? = nil, initrdPath: String? = nil) {
        self.kernelImagePath = kernelImagePath
        self.bootArgs = bootArgs
        self.initrdPath = initrdPath
    }

    enum CodingKeys: String, CodingKey {
        case bootArgs = "boot_args"
        case initrdPath = "initrd_path"
        case kernelImagePath = "kernel_image_path"
    }
}
