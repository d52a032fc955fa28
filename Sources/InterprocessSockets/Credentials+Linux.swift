#if canImport(Glibc)
import Glibc
#endif

/// This process's user id.
package func currentUID() -> UInt32 { UInt32(getuid()) }
