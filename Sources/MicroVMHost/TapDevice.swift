import CMicroVMSys

/// A persistent TAP device on the host, the backing of a VM's network interface.
///
/// Created through `/dev/net/tun` with `IFF_VNET_HDR` (Firecracker requires it) and made
/// persistent so it outlives the creating file descriptor; Firecracker attaches to it by name.
/// Removal is explicit and idempotent, because a persistent device otherwise lives until reboot.
public struct TapDevice: Sendable, Hashable {
    public let name: String

    /// Creates the device (or takes over an existing persistent one with the same name) and
    /// brings it up. `owner` lets an unprivileged (jailed) VMM attach to it.
    public static func create(name: String, owner: UInt32? = nil) throws(HostError) -> TapDevice {
        try validate(name: name)
        do {
            try SystemCallError.check("ioctl(TUNSETIFF/TUNSETPERSIST)", "TAP device \(name)") {
                cmv_tap_create(name, owner.map { Int32(bitPattern: $0) } ?? -1)
            }
            try SystemCallError.check("ioctl(SIOCSIFFLAGS)", "interface \(name)") {
                cmv_interface_set_up(name, 1)
            }
        } catch {
            _ = cmv_tap_delete(name)
            throw HostError.system(
                error, hint: "creating TAP devices needs root (CAP_NET_ADMIN) and /dev/net/tun (modprobe tun)")
        }
        return TapDevice(name: name)
    }

    /// Deletes the device. Deleting one that no longer exists succeeds.
    public func remove() throws(HostError) {
        guard TapDevice.exists(name: name) else { return }
        do {
            try SystemCallError.check("ioctl(TUNSETPERSIST 0)", "TAP device \(name)") {
                cmv_tap_delete(name)
            }
        } catch {
            throw HostError.system(
                error, hint: "a process (a VMM still running?) may hold the device; stop it first")
        }
    }

    /// Whether a network interface with this name exists on the host.
    public static func exists(name: String) -> Bool {
        FileSystem.exists("/sys/class/net/\(name)")
    }

    /// Interface names are at most 15 bytes and may not contain '/', whitespace or ':'.
    public static func validate(name: String) throws(HostError) {
        let bytes = Array(name.utf8)
        let valid =
            !bytes.isEmpty && bytes.count <= 15 && name != "." && name != ".."
            && !bytes.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 })
        guard valid else {
            throw .invalidArgument(
                "'\(name)' is not a valid network interface name",
                hint: "use 1-15 characters without '/', ':' or spaces, e.g. 'mvm-tap0'")
        }
    }
}
