@testable import MicroVM
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The handshake parser of the userfaultfd handler (C), which Firecracker's JSON reaches
/// unchecked: what it accepts and the sentence it gives for what it refuses.
@Suite("Lazy memory handshake parsing")
struct LazyMemoryHandshakeTests {
    @Test("Firecracker 1.12's handshake: both page size fields, in bytes; unknown keys skipped")
    func firecracker112() throws {
        let json = #"[{"base_host_virt_addr":139637976727552,"size":67108864,"offset":0,"page_size":4096,"page_size_kib":4096},"#
            + #" {"base_host_virt_addr":139638245163008,"size":2097152,"offset":67108864,"page_size":2097152,"page_size_kib":2097152,"future":{"a":[1,"]"]}}]"#
        let regions = try LazyMemory.parseRegions(json).get()
        #expect(regions == [
            .init(address: 0x7f00_0000_0000, size: 64 << 20, offset: 0, pageSize: 4096),
            .init(address: 0x7f00_1000_0000, size: 2 << 20, offset: 64 << 20, pageSize: 2 << 20),
        ])
    }

    @Test("Older handshakes: page_size_kib alone (bytes, or KiB when smaller than a page)")
    func olderPageSize() throws {
        #expect(try LazyMemory.parseRegions(#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#).get().first?.pageSize == 4096)
        #expect(try LazyMemory.parseRegions(#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4}]"#).get().first?.pageSize == 4096)
    }

    @Test(
        "Malformed handshakes are refused with a sentence",
        arguments: [
            ("", "expected a JSON array"),
            ("[]", "empty"),
            ("{}", "expected a JSON array"),
            (#"[{"size":4096,"offset":0,"page_size":4096}]"#, "no base_host_virt_addr"),
            (#"[{"base_host_virt_addr":4096,"offset":0,"page_size":4096}]"#, "no size"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"page_size":4096}]"#, "no offset"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#, "neither page_size"),
            (#"[{"base_host_virt_addr":-4096,"size":4096,"offset":0,"page_size":4096}]"#, "not a non-negative integer"),
            (#"[{"base_host_virt_addr":4096.5,"size":4096,"offset":0,"page_size":4096}]"#, "not a non-negative integer"),
            (#"[{"base_host_virt_addr":99999999999999999999999,"size":4096,"offset":0,"page_size":4096}]"#, "not a non-negative integer"),
            (#"[{"base_host_virt_addr":100,"size":4096,"offset":0,"page_size":4096}]"#, "not page-aligned"),
            (#"[{"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096}]"#, "multiple of the page size"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]"#, "power of two"),
            (#"[{"base_host_virt_addr":4096,"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]"#, "given twice"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}"#, "expected ',' or ']'"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}] x"#, "unexpected bytes"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":18446744073709547520,"page_size":4096}]"#, "overflows"),
            (#"[{"base_host_virt_addr" 4096}]"#, "expected ':'"),
        ])
    func malformed(json: String, expected: String) {
        switch LazyMemory.parseRegions(json) {
        case .success(let regions):
            Issue.record("accepted \(json): \(regions)")
        case .failure(let error):
            #expect(error.detail.contains(expected), "\(json): \(error.detail)")
            #expect(error.errno == EINVAL)
        }
    }

    @Test("More regions than the handler keeps are refused, not truncated")
    func tooManyRegions() {
        let region = #"{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}"#
        let json = "[" + Array(repeating: region, count: 33).joined(separator: ",") + "]"
        guard case .failure(let error) = LazyMemory.parseRegions(json) else {
            Issue.record("accepted 33 regions")
            return
        }
        #expect(error.detail.contains("more than 32"))
    }
}
