//! NVML, NVIDIA's management library, loaded at run time with `libloading`.
//!
//! Owns every `unsafe` call into `libnvidia-ml.so.1`: loading it, resolving the symbols, initialising and
//! shutting it down, and the per-device queries the inventory needs. Nothing is linked at build time, so the
//! agent runs on nodes without NVIDIA software. It must never let a raw pointer or a device handle escape this
//! module, never call a symbol it did not resolve, and never panic on what the library returns: a failing
//! optional query leaves its field `None`, a failing required one marks the device unhealthy.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString};
use std::path::Path;

use super::{GpuInfo, GpuProcess};

/// NVML's default library name, found through the loader's search path.
pub(crate) const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

type Return = c_int;
type Device = *mut c_void;

const SUCCESS: Return = 0;
const ERROR_NOT_SUPPORTED: Return = 3;
const ERROR_INSUFFICIENT_SIZE: Return = 7;
const ERROR_GPU_IS_LOST: Return = 15;
const ERROR_RESET_REQUIRED: Return = 16;

/// `NVML_VALUE_NOT_AVAILABLE` for 64-bit values (e.g. a process's memory inside a container).
const VALUE_NOT_AVAILABLE: c_ulonglong = c_ulonglong::MAX;
/// Buffer sizes from `nvml.h` (`*_V2_BUFFER_SIZE` and `NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE`).
const UUID_BUFFER: usize = 96;
const NAME_BUFFER: usize = 96;
const DRIVER_VERSION_BUFFER: usize = 80;
const TEMPERATURE_GPU: c_int = 0;
const MIB: u64 = 1024 * 1024;

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2_t`: `used` excludes the memory the driver reserves.
#[repr(C)]
#[derive(Default)]
struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2` = `NVML_STRUCT_VERSION(Memory, 2)`: the structure's size with the version in the top byte.
const MEMORY_V2_VERSION: c_uint = std::mem::size_of::<MemoryV2>() as c_uint | (2 << 24);

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// `nvmlPciInfo_t` (the layout of `nvmlDeviceGetPciInfo_v3`).
#[repr(C)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

/// `nvmlProcessInfo_t` (the layout of the `_v2` and `_v3` process queries).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

type FnVoid = unsafe extern "C" fn() -> Return;
type FnCount = unsafe extern "C" fn(*mut c_uint) -> Return;
type FnHandleByIndex = unsafe extern "C" fn(c_uint, *mut Device) -> Return;
type FnHandleByUuid = unsafe extern "C" fn(*const c_char, *mut Device) -> Return;
type FnDeviceString = unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Return;
type FnSystemString = unsafe extern "C" fn(*mut c_char, c_uint) -> Return;
type FnMemory = unsafe extern "C" fn(Device, *mut Memory) -> Return;
type FnMemoryV2 = unsafe extern "C" fn(Device, *mut MemoryV2) -> Return;
type FnTwoInts = unsafe extern "C" fn(Device, *mut c_int, *mut c_int) -> Return;
type FnTwoUints = unsafe extern "C" fn(Device, *mut c_uint, *mut c_uint) -> Return;
type FnUtilization = unsafe extern "C" fn(Device, *mut Utilization) -> Return;
type FnPciInfo = unsafe extern "C" fn(Device, *mut PciInfo) -> Return;
type FnTemperature = unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Return;
type FnUint = unsafe extern "C" fn(Device, *mut c_uint) -> Return;
type FnProcesses = unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> Return;
type FnErrorString = unsafe extern "C" fn(Return) -> *const c_char;

/// Why NVML could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NvmlError {
    #[error("loading {library}: {message}")]
    Load { library: String, message: String },
    #[error("{library} lacks {symbol}")]
    Symbol {
        library: String,
        symbol: &'static str,
    },
    #[error("{call}: {message} (NVML error {code})")]
    Call {
        call: &'static str,
        code: Return,
        message: String,
    },
}

/// Symbols every use needs; loading fails without them.
struct Required {
    init: FnVoid,
    shutdown: FnVoid,
    device_count: FnCount,
    handle_by_index: FnHandleByIndex,
    uuid: FnDeviceString,
    name: FnDeviceString,
    memory: FnMemory,
}

/// Symbols whose absence (older drivers) only leaves fields empty.
struct Optional {
    error_string: Option<FnErrorString>,
    handle_by_uuid: Option<FnHandleByUuid>,
    driver_version: Option<FnSystemString>,
    memory_v2: Option<FnMemoryV2>,
    compute_capability: Option<FnTwoInts>,
    mig_mode: Option<FnTwoUints>,
    utilization: Option<FnUtilization>,
    pci_info: Option<FnPciInfo>,
    temperature: Option<FnTemperature>,
    power_usage: Option<FnUint>,
    power_limit: Option<FnUint>,
    compute_processes: Option<FnProcesses>,
}

/// An initialised NVML. Dropping it calls `nvmlShutdown`.
pub(crate) struct Nvml {
    required: Required,
    optional: Optional,
    // Declared last so that it is dropped after `Drop::drop` ran and no function pointer is used afterwards.
    _library: libloading::Library,
}

// The function pointers point into `_library`, which lives as long as the struct; NVML's API is thread-safe
// (documented by NVIDIA), and no device handle is stored.
impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

/// Resolves `name` in `library` as a function of type `T`.
///
/// # Safety
/// `T` must be the function pointer type matching the symbol's C declaration in `nvml.h`.
unsafe fn symbol<T: Copy>(library: &libloading::Library, name: &'static str) -> Option<T> {
    let with_nul = format!("{name}\0");
    // SAFETY: the caller guarantees that `T` matches the symbol's declaration; the pointer is copied out and
    // used only while `library` is loaded (see `Nvml`'s field order).
    unsafe { library.get::<T>(with_nul.as_bytes()).ok().map(|s| *s) }
}

impl Nvml {
    /// Loads the library (`path`, or [`DEFAULT_LIBRARY`]) and calls `nvmlInit_v2`.
    pub(crate) fn load(path: Option<&Path>) -> Result<Nvml, NvmlError> {
        let library_name =
            path.map_or_else(|| DEFAULT_LIBRARY.to_string(), |p| p.display().to_string());
        // SAFETY: loading runs the library's initialisers. libnvidia-ml's are sound to run in any process; a
        // file that is not NVML but exports these names is a misconfiguration this API cannot guard against.
        let library = unsafe {
            match path {
                Some(p) => libloading::Library::new(p),
                None => libloading::Library::new(DEFAULT_LIBRARY),
            }
        }
        .map_err(|e| NvmlError::Load {
            library: library_name.clone(),
            message: e.to_string(),
        })?;

        let missing = |symbol| NvmlError::Symbol {
            library: library_name.clone(),
            symbol,
        };
        // SAFETY (for every `symbol` call below): each type alias matches the C prototype in nvml.h:
        //   nvmlReturn_t nvmlInit_v2(void); nvmlShutdown(void);
        //   nvmlDeviceGetCount_v2(unsigned int*); nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t*);
        //   nvmlDeviceGetHandleByUUID(const char*, nvmlDevice_t*);
        //   nvmlDeviceGetUUID/GetName(nvmlDevice_t, char*, unsigned int);
        //   nvmlSystemGetDriverVersion(char*, unsigned int); nvmlErrorString(nvmlReturn_t) -> const char*;
        //   nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t*); _v2(nvmlDevice_t, nvmlMemory_v2_t*);
        //   nvmlDeviceGetCudaComputeCapability(nvmlDevice_t, int*, int*);
        //   nvmlDeviceGetMigMode(nvmlDevice_t, unsigned int*, unsigned int*);
        //   nvmlDeviceGetUtilizationRates(nvmlDevice_t, nvmlUtilization_t*);
        //   nvmlDeviceGetPciInfo_v3(nvmlDevice_t, nvmlPciInfo_t*);
        //   nvmlDeviceGetTemperature(nvmlDevice_t, nvmlTemperatureSensors_t, unsigned int*);
        //   nvmlDeviceGetPowerUsage/GetEnforcedPowerLimit(nvmlDevice_t, unsigned int*);
        //   nvmlDeviceGetComputeRunningProcesses_v3/_v2(nvmlDevice_t, unsigned int*, nvmlProcessInfo_t*).
        let (required, optional) = unsafe {
            let required = Required {
                init: symbol(&library, "nvmlInit_v2").ok_or_else(|| missing("nvmlInit_v2"))?,
                shutdown: symbol(&library, "nvmlShutdown")
                    .ok_or_else(|| missing("nvmlShutdown"))?,
                device_count: symbol(&library, "nvmlDeviceGetCount_v2")
                    .ok_or_else(|| missing("nvmlDeviceGetCount_v2"))?,
                handle_by_index: symbol(&library, "nvmlDeviceGetHandleByIndex_v2")
                    .ok_or_else(|| missing("nvmlDeviceGetHandleByIndex_v2"))?,
                uuid: symbol(&library, "nvmlDeviceGetUUID")
                    .ok_or_else(|| missing("nvmlDeviceGetUUID"))?,
                name: symbol(&library, "nvmlDeviceGetName")
                    .ok_or_else(|| missing("nvmlDeviceGetName"))?,
                memory: symbol(&library, "nvmlDeviceGetMemoryInfo")
                    .ok_or_else(|| missing("nvmlDeviceGetMemoryInfo"))?,
            };
            let optional = Optional {
                error_string: symbol(&library, "nvmlErrorString"),
                handle_by_uuid: symbol(&library, "nvmlDeviceGetHandleByUUID"),
                driver_version: symbol(&library, "nvmlSystemGetDriverVersion"),
                memory_v2: symbol(&library, "nvmlDeviceGetMemoryInfo_v2"),
                compute_capability: symbol(&library, "nvmlDeviceGetCudaComputeCapability"),
                mig_mode: symbol(&library, "nvmlDeviceGetMigMode"),
                utilization: symbol(&library, "nvmlDeviceGetUtilizationRates"),
                pci_info: symbol(&library, "nvmlDeviceGetPciInfo_v3"),
                temperature: symbol(&library, "nvmlDeviceGetTemperature"),
                power_usage: symbol(&library, "nvmlDeviceGetPowerUsage"),
                power_limit: symbol(&library, "nvmlDeviceGetEnforcedPowerLimit"),
                compute_processes: symbol::<FnProcesses>(
                    &library,
                    "nvmlDeviceGetComputeRunningProcesses_v3",
                )
                .or_else(|| symbol(&library, "nvmlDeviceGetComputeRunningProcesses_v2")),
            };
            (required, optional)
        };
        let nvml = NvmlInit {
            required,
            optional,
            library,
        };
        nvml.init()
    }

    /// Turns a return code into a result, with NVML's own text for errors.
    fn check(&self, call: &'static str, code: Return) -> Result<(), NvmlError> {
        check(&self.optional, call, code)
    }

    /// The driver version, e.g. `580.159.04`.
    pub(crate) fn driver_version(&self) -> Option<String> {
        let f = self.optional.driver_version?;
        let mut buf = [0 as c_char; DRIVER_VERSION_BUFFER];
        // SAFETY: `buf` is writable for `buf.len()` bytes, the length passed; NVML writes a NUL-terminated string.
        let code = unsafe { f(buf.as_mut_ptr(), buf.len() as c_uint) };
        (code == SUCCESS)
            .then(|| c_string(&buf))
            .filter(|v| !v.is_empty())
    }

    /// Every GPU, sorted by index. A device whose handle, UUID, name or memory cannot be read is still listed,
    /// with `healthy: false`.
    pub(crate) fn gpus(&self) -> Result<Vec<GpuInfo>, NvmlError> {
        let mut count: c_uint = 0;
        // SAFETY: `count` is a valid `unsigned int` to write.
        let code = unsafe { (self.required.device_count)(&mut count) };
        self.check("nvmlDeviceGetCount_v2", code)?;
        Ok((0..count).map(|index| self.gpu(index)).collect())
    }

    fn gpu(&self, index: c_uint) -> GpuInfo {
        let mut gpu = GpuInfo {
            index,
            uuid: String::new(),
            model: String::new(),
            memory_total_mib: 0,
            memory_used_mib: 0,
            compute_capability: None,
            mig_enabled: None,
            utilization_gpu_percent: None,
            utilization_memory_percent: None,
            temperature_c: None,
            power_draw_w: None,
            power_limit_w: None,
            pci_bus_id: String::new(),
            healthy: false,
        };
        let mut device: Device = std::ptr::null_mut();
        // SAFETY: `device` is a valid location for a handle.
        let code = unsafe { (self.required.handle_by_index)(index, &mut device) };
        if let Err(error) = self.check("nvmlDeviceGetHandleByIndex_v2", code) {
            tracing::warn!(gpu = index, %error, "GPU unusable");
            return gpu;
        }
        let mut healthy = true;
        let mut required = |result: Result<(), NvmlError>| {
            if let Err(error) = result {
                tracing::warn!(gpu = index, %error, "GPU query failed");
                healthy = false;
            }
        };
        required(
            self.device_string(self.required.uuid, "nvmlDeviceGetUUID", device, UUID_BUFFER)
                .map(|v| gpu.uuid = v),
        );
        required(
            self.device_string(self.required.name, "nvmlDeviceGetName", device, NAME_BUFFER)
                .map(|v| gpu.model = v),
        );
        required(self.memory(device).map(|(total, used)| {
            gpu.memory_total_mib = to_mib(total);
            gpu.memory_used_mib = to_mib(used);
        }));
        let mut lost = false;
        let mut optional = |call: &'static str, code: Return| {
            if matches!(code, ERROR_GPU_IS_LOST | ERROR_RESET_REQUIRED) {
                lost = true;
            }
            if code != SUCCESS && code != ERROR_NOT_SUPPORTED {
                tracing::debug!(gpu = index, call, code, "optional GPU query failed");
            }
            code == SUCCESS
        };

        if let Some(f) = self.optional.compute_capability {
            let (mut major, mut minor): (c_int, c_int) = (0, 0);
            // SAFETY: `device` is a handle NVML returned; both outputs are valid `int` locations.
            if optional("nvmlDeviceGetCudaComputeCapability", unsafe {
                f(device, &mut major, &mut minor)
            }) {
                gpu.compute_capability = u32::try_from(major).ok().zip(u32::try_from(minor).ok());
            }
        }
        if let Some(f) = self.optional.mig_mode {
            let (mut current, mut pending): (c_uint, c_uint) = (0, 0);
            // SAFETY: as above, with two `unsigned int` outputs.
            if optional("nvmlDeviceGetMigMode", unsafe {
                f(device, &mut current, &mut pending)
            }) {
                gpu.mig_enabled = Some(current == 1);
            }
        }
        if let Some(f) = self.optional.utilization {
            let mut rates = Utilization::default();
            // SAFETY: `rates` is a valid `nvmlUtilization_t`.
            if optional("nvmlDeviceGetUtilizationRates", unsafe {
                f(device, &mut rates)
            }) {
                gpu.utilization_gpu_percent = Some(rates.gpu).filter(|p| *p <= 100);
                gpu.utilization_memory_percent = Some(rates.memory).filter(|p| *p <= 100);
            }
        }
        if let Some(f) = self.optional.pci_info {
            let mut pci = PciInfo {
                bus_id_legacy: [0; 16],
                domain: 0,
                bus: 0,
                device: 0,
                pci_device_id: 0,
                pci_sub_system_id: 0,
                bus_id: [0; 32],
            };
            // SAFETY: `pci` is a valid, zeroed `nvmlPciInfo_t` of the v3 layout.
            if optional("nvmlDeviceGetPciInfo_v3", unsafe { f(device, &mut pci) }) {
                gpu.pci_bus_id = c_string(&pci.bus_id);
            }
        }
        if let Some(f) = self.optional.temperature {
            let mut celsius: c_uint = 0;
            // SAFETY: `celsius` is a valid `unsigned int`; sensor 0 is NVML_TEMPERATURE_GPU.
            if optional("nvmlDeviceGetTemperature", unsafe {
                f(device, TEMPERATURE_GPU, &mut celsius)
            }) {
                gpu.temperature_c = Some(celsius);
            }
        }
        if let Some(f) = self.optional.power_usage {
            let mut milliwatts: c_uint = 0;
            // SAFETY: `milliwatts` is a valid `unsigned int`.
            if optional("nvmlDeviceGetPowerUsage", unsafe {
                f(device, &mut milliwatts)
            }) {
                gpu.power_draw_w = Some(f64::from(milliwatts) / 1000.0);
            }
        }
        if let Some(f) = self.optional.power_limit {
            let mut milliwatts: c_uint = 0;
            // SAFETY: `milliwatts` is a valid `unsigned int`.
            if optional("nvmlDeviceGetEnforcedPowerLimit", unsafe {
                f(device, &mut milliwatts)
            }) {
                gpu.power_limit_w = Some(f64::from(milliwatts) / 1000.0);
            }
        }
        gpu.healthy = healthy && !lost && !gpu.uuid.is_empty() && gpu.memory_total_mib > 0;
        gpu
    }

    /// `(total, used)` bytes, `used` without the driver's reservation where the driver can tell it apart.
    fn memory(&self, device: Device) -> Result<(u64, u64), NvmlError> {
        if let Some(f) = self.optional.memory_v2 {
            let mut memory = MemoryV2 {
                version: MEMORY_V2_VERSION,
                ..MemoryV2::default()
            };
            // SAFETY: `memory` is a valid `nvmlMemory_v2_t` whose `version` field names its layout.
            if unsafe { f(device, &mut memory) } == SUCCESS {
                return Ok((memory.total, memory.used));
            }
        }
        let mut memory = Memory::default();
        // SAFETY: `memory` is a valid `nvmlMemory_t`.
        let code = unsafe { (self.required.memory)(device, &mut memory) };
        self.check("nvmlDeviceGetMemoryInfo", code)?;
        Ok((memory.total, memory.used))
    }

    fn device_string(
        &self,
        f: FnDeviceString,
        call: &'static str,
        device: Device,
        size: usize,
    ) -> Result<String, NvmlError> {
        let mut buf = vec![0 as c_char; size];
        // SAFETY: `buf` is writable for `size` bytes, the length passed; NVML NUL-terminates what it writes.
        let code = unsafe { f(device, buf.as_mut_ptr(), size as c_uint) };
        self.check(call, code)?;
        Ok(c_string(&buf))
    }

    /// Compute processes on the GPU with this UUID.
    pub(crate) fn running_processes(&self, uuid: &str) -> Result<Vec<GpuProcess>, NvmlError> {
        let unsupported = |call| NvmlError::Call {
            call,
            code: ERROR_NOT_SUPPORTED,
            message: "not in this NVML".into(),
        };
        let by_uuid = self
            .optional
            .handle_by_uuid
            .ok_or_else(|| unsupported("nvmlDeviceGetHandleByUUID"))?;
        let query = self
            .optional
            .compute_processes
            .ok_or_else(|| unsupported("nvmlDeviceGetComputeRunningProcesses"))?;
        let c_uuid = CString::new(uuid).map_err(|_| NvmlError::Call {
            call: "nvmlDeviceGetHandleByUUID",
            code: 2,
            message: "the UUID contains a NUL byte".into(),
        })?;
        let mut device: Device = std::ptr::null_mut();
        // SAFETY: `c_uuid` is NUL-terminated and outlives the call; `device` is a valid location for a handle.
        let code = unsafe { by_uuid(c_uuid.as_ptr(), &mut device) };
        self.check("nvmlDeviceGetHandleByUUID", code)?;

        // Processes may start between the two calls: ask for the count, then retry with room to spare.
        let mut capacity: c_uint = 0;
        for _ in 0..4 {
            let mut infos = vec![ProcessInfo::default(); capacity as usize];
            let mut count = capacity;
            let ptr = if infos.is_empty() {
                std::ptr::null_mut()
            } else {
                infos.as_mut_ptr()
            };
            // SAFETY: `count` holds the number of `nvmlProcessInfo_t` entries `ptr` can take (NULL when 0, which
            // NVML accepts to report the count); NVML writes at most `count` entries and updates `count`.
            let code = unsafe { query(device, &mut count, ptr) };
            match code {
                SUCCESS => {
                    infos.truncate(count.min(capacity) as usize);
                    return Ok(infos
                        .into_iter()
                        .map(|p| GpuProcess {
                            pid: p.pid,
                            gpu_uuid: uuid.to_string(),
                            used_memory_mib: (p.used_gpu_memory != VALUE_NOT_AVAILABLE)
                                .then(|| to_mib(p.used_gpu_memory)),
                        })
                        .collect());
                }
                ERROR_INSUFFICIENT_SIZE => capacity = count.saturating_add(4),
                _ => self.check("nvmlDeviceGetComputeRunningProcesses", code)?,
            }
        }
        Err(NvmlError::Call {
            call: "nvmlDeviceGetComputeRunningProcesses",
            code: ERROR_INSUFFICIENT_SIZE,
            message: "the process list kept growing".into(),
        })
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialised by `Nvml::load` and the library is still loaded (dropped after this).
        let code = unsafe { (self.required.shutdown)() };
        if code != SUCCESS {
            tracing::debug!(code, "nvmlShutdown failed");
        }
    }
}

/// A loaded library whose `nvmlInit_v2` has not succeeded yet (so nothing to shut down on drop).
struct NvmlInit {
    required: Required,
    optional: Optional,
    library: libloading::Library,
}

impl NvmlInit {
    fn init(self) -> Result<Nvml, NvmlError> {
        // SAFETY: `init` was resolved from the loaded library with nvmlInit_v2's prototype.
        let code = unsafe { (self.required.init)() };
        check(&self.optional, "nvmlInit_v2", code)?;
        Ok(Nvml {
            required: self.required,
            optional: self.optional,
            _library: self.library,
        })
    }
}

fn check(optional: &Optional, call: &'static str, code: Return) -> Result<(), NvmlError> {
    if code == SUCCESS {
        return Ok(());
    }
    let message = optional
        .error_string
        .map(|f| {
            // SAFETY: nvmlErrorString takes any code and returns a pointer to a static NUL-terminated string, or
            // NULL, which is checked.
            let ptr = unsafe { f(code) };
            if ptr.is_null() {
                String::new()
            } else {
                // SAFETY: non-NULL, NUL-terminated and static, per NVML's documentation.
                unsafe { CStr::from_ptr(ptr) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown error".to_string());
    Err(NvmlError::Call {
        call,
        code,
        message,
    })
}

/// Bytes to MiB, rounded to the nearest as `nvidia-smi` does (1,462,566,912 bytes show as 1395 MiB).
fn to_mib(bytes: u64) -> u64 {
    bytes / MIB + u64::from(bytes % MIB >= MIB / 2)
}

/// The text before the first NUL of a C buffer (all of it when there is none), lossily decoded.
fn c_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_nvml_h() {
        assert_eq!(std::mem::size_of::<Memory>(), 24);
        assert_eq!(std::mem::size_of::<MemoryV2>(), 40);
        assert_eq!(MEMORY_V2_VERSION, 0x0200_0028);
        assert_eq!(std::mem::size_of::<PciInfo>(), 68);
        assert_eq!(std::mem::size_of::<ProcessInfo>(), 24);
        assert_eq!(std::mem::size_of::<Utilization>(), 8);
    }

    #[test]
    fn mib_rounds_like_nvidia_smi() {
        // Readings of one H200 through NVML, next to what nvidia-smi printed for them.
        assert_eq!(to_mib(150_754_820_096), 143_771);
        assert_eq!(to_mib(1_462_566_912), 1395);
        assert_eq!(to_mib(1_453_326_336), 1386);
        assert_eq!(
            (to_mib(0), to_mib(MIB / 2 - 1), to_mib(u64::MAX)),
            (0, 0, u64::MAX / MIB + 1)
        );
    }

    #[test]
    fn c_strings_stop_at_nul_or_end() {
        let buf: Vec<c_char> = b"GPU-1\0junk".iter().map(|b| *b as c_char).collect();
        assert_eq!(c_string(&buf), "GPU-1");
        let unterminated: Vec<c_char> = b"abc".iter().map(|b| *b as c_char).collect();
        assert_eq!(c_string(&unterminated), "abc");
    }

    #[test]
    fn a_missing_library_is_a_load_error() {
        let err = Nvml::load(Some(Path::new("/nonexistent/libnvidia-ml.so.1")));
        assert!(matches!(err, Err(NvmlError::Load { .. })), "{err:?}");
    }

    #[test]
    fn a_library_without_nvml_symbols_is_refused() {
        // libc is loaded in every process and has none of NVML's symbols.
        let err = Nvml::load(Some(Path::new("libc.so.6")));
        assert!(
            matches!(
                err,
                Err(NvmlError::Symbol {
                    symbol: "nvmlInit_v2",
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
