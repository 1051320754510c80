import Foundation
import MicroVM
import MicroVMHost

#if canImport(Glibc)
    import Glibc
#endif

/// A file whose growth a progress line shows.
struct ProgressItem: Sendable, Equatable {
    var label: String
    var bytes: Int64
    /// The size it ends at, when known beforehand (a full snapshot's memory: the guest's RAM).
    var total: Int64?

    /// How far a file has got.
    enum Measure: Sendable {
        /// Allocated blocks: Firecracker sizes the memory file to the guest's RAM before it
        /// writes a page, so there the length says nothing about progress.
        case allocated
        /// The length: a copy that leaves zero blocks as holes (staging a snapshot into a jail)
        /// allocates little, but its length grows with the offset it has reached.
        case length
    }

    /// How far the furthest of `paths` has got; nil while none exists.
    static func file(_ label: String, _ paths: [String], total: Int64? = nil, measure: Measure = .allocated) -> ProgressItem? {
        var best: Int64?
        for path in paths {
            var info = stat()
            guard stat(path, &info) == 0 else { continue }
            let size = Int64(info.st_size)
            let reached = measure == .length ? size : min(size, Int64(info.st_blocks) * 512)
            best = max(best ?? 0, reached)
        }
        return best.map { ProgressItem(label: label, bytes: $0, total: total) }
    }
}

enum ProgressFormat {
    /// Binary units, as the guest's memory is given (`--memory` in MiB): 512 B, 1.5 KiB, 64.0 MiB.
    static func bytes(_ count: Int64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        guard count >= 1024 else { return "\(max(count, 0)) B" }
        var value = Double(count) / 1024
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return String(format: "%.1f", value) + " " + units[unit]
    }

    /// `[#####---------------]`, `width` cells between the brackets.
    static func bar(fraction: Double, width: Int = 20) -> String {
        let filled = Int((min(max(fraction, 0), 1) * Double(width)).rounded(.down))
        return "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "]"
    }

    /// `snapshot: memory [######--------------]  30% 19.2 MiB / 64.0 MiB, state 13.5 KiB (2s)`
    static func line(_ title: String, _ items: [ProgressItem], elapsed: Duration? = nil) -> String {
        let parts = items.map { item -> String in
            guard let total = item.total, total > 0 else { return "\(item.label) \(bytes(item.bytes))" }
            let fraction = min(max(Double(item.bytes) / Double(total), 0), 1)
            let percent = String(format: "%3d%%", Int((fraction * 100).rounded(.down)))
            return "\(item.label) \(bar(fraction: fraction)) \(percent) \(bytes(item.bytes)) / \(bytes(total))"
        }
        let text = parts.isEmpty ? "\(title): starting" : "\(title): " + parts.joined(separator: ", ")
        // Whole seconds: a file that does not grow for a while (zeros skipped) still shows life.
        return elapsed.map { text + " (\($0.components.seconds)s)" } ?? text
    }
}

enum Progress {
    /// Runs `body` and, when standard error is a terminal and the work lasts longer than
    /// `delay`, redraws one line there with what `probe` sees grow. Scripts and tests (no
    /// terminal) get the command's result alone; a quick operation gets no flicker. The
    /// library reports no progress, so the files are watched from outside while it works.
    static func showing<T, E: Error>(
        _ title: String, enabled: Bool = isatty(2) == 1, delay: Duration = .milliseconds(400), interval: Duration = .milliseconds(200),
        probe: @escaping @Sendable () -> [ProgressItem], write: @escaping @Sendable (String) -> Void = Progress.standardError,
        _ body: () async throws(E) -> T
    ) async throws(E) -> T {
        guard enabled else { return try await body() }
        let started = ContinuousClock.now
        let display = Task {
            try? await Task.sleep(for: delay)
            var shown: String?
            while !Task.isCancelled {
                let line = ProgressFormat.line(title, probe(), elapsed: ContinuousClock.now - started)
                if line != shown {
                    write("\r\u{1B}[K" + line)
                    shown = line
                }
                try? await Task.sleep(for: interval)
            }
            if shown != nil { write("\r\u{1B}[K") }
        }
        let result: Result<T, E>
        do throws(E) {
            result = .success(try await body())
        } catch {
            result = .failure(error)
        }
        display.cancel()
        await display.value
        return try result.get()
    }

    /// Where VM `id`'s directory is while it is being made: its record says so once written
    /// (after staging); until then, where its jail settings put it.
    static func vmDirectory(id: String, configuration: DriverConfiguration) -> @Sendable () -> String? {
        let store = configuration.stateStore
        let jail = (try? VMIdentifier(id)).map {
            JailLayout(chrootBase: configuration.jailer.canonicalChrootBase, execFileName: configuration.jailer.execFileName, id: $0)
        }
        // Jailed or not is decided by the create: what is on disk says which it was.
        return { (try? store.read(id: id))?.directory ?? jail?.matchingDisk().rootDirectory.string }
    }

    /// A create's writable drive copies (per-VM copies of their images), each against its
    /// image's allocated size: the copy is extent-exact, so it allocates what the image has.
    static func driveCopies(_ spec: VMSpec, configuration: DriverConfiguration) -> @Sendable () -> [ProgressItem] {
        let vmDirectory = vmDirectory(id: spec.id, configuration: configuration)
        let drives: [(id: String, total: Int64?)] = spec.drives.filter { $0.readOnly != true }.map { drive in
            var info = stat()
            return (drive.id, stat(drive.path, &info) == 0 ? Int64(info.st_blocks) * 512 : nil)
        }
        return {
            guard let directory = vmDirectory() else { return [] }
            return drives.compactMap { drive in
                ProgressItem.file(drive.id, [DriveCopyFiles.copy(of: drive.id, inVMDirectory: directory)], total: drive.total)
            }
        }
    }

    /// Redrawn in place: carriage return, erase the line, the new text (no newline).
    @Sendable static func standardError(_ text: String) {
        // Not FileHandle, which traps when the terminal is gone (EIO) halfway through a create.
        Output.errorText(text)
    }
}
