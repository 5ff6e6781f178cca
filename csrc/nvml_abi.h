/*
 * The part of NVML's C interface the migrestore simulator answers: types, constants and
 * prototypes with the names, layouts and calling convention of NVIDIA's nvml.h, written
 * for this project (sizes and offsets are checked by tests/cabi against pynvml's ctypes
 * structures and by _Static_assert below against the values nvml.h gives).
 *
 * Both the simulated library (nvml_sim.c) and the C test program (tests/cabi) include
 * it; a program built against the real nvml.h calls the same symbols with the same
 * memory layout.
 */
#ifndef MIGRESTORE_NVML_ABI_H
#define MIGRESTORE_NVML_ABI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum nvmlReturn_enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

/* Opaque handles: pointers to incomplete structs, as in nvml.h. */
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlGpuInstance_st *nvmlGpuInstance_t;
typedef struct nvmlComputeInstance_st *nvmlComputeInstance_t;

typedef enum nvmlEnableState_enum { NVML_FEATURE_DISABLED = 0, NVML_FEATURE_ENABLED = 1 } nvmlEnableState_t;
typedef unsigned int nvmlDeviceArchitecture_t;

#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
#define NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE 80
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE 16
#define NVML_DEVICE_MIG_DISABLE 0
#define NVML_DEVICE_MIG_ENABLE 1
#define NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED 0
#define NVML_STRUCT_VERSION(data, ver) (unsigned int)(sizeof(nvml##data##_v##ver##_t) | ((ver) << 24U))

typedef struct nvmlPciInfo_st {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfo_t;

typedef struct nvmlMemory_st {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct nvmlProcessInfo_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;
typedef nvmlProcessInfo_t nvmlProcessInfo_v2_t;

typedef struct nvmlGpuInstancePlacement_st {
    unsigned int start;
    unsigned int size;
} nvmlGpuInstancePlacement_t;

typedef struct nvmlGpuInstanceProfileInfo_st {
    unsigned int id;
    unsigned int isP2pSupported;
    unsigned int sliceCount;
    unsigned int instanceCount;
    unsigned int multiprocessorCount;
    unsigned int copyEngineCount;
    unsigned int decoderCount;
    unsigned int encoderCount;
    unsigned int jpegCount;
    unsigned int ofaCount;
    unsigned long long memorySizeMB;
} nvmlGpuInstanceProfileInfo_t;

typedef struct nvmlGpuInstanceProfileInfo_v2_st {
    unsigned int version;
    unsigned int id;
    unsigned int isP2pSupported;
    unsigned int sliceCount;
    unsigned int instanceCount;
    unsigned int multiprocessorCount;
    unsigned int copyEngineCount;
    unsigned int decoderCount;
    unsigned int encoderCount;
    unsigned int jpegCount;
    unsigned int ofaCount;
    unsigned long long memorySizeMB;
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
} nvmlGpuInstanceProfileInfo_v2_t;
#define nvmlGpuInstanceProfileInfo_v2 NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)

/* v3: no isP2pSupported; capabilities (NVML_GPU_INSTANCE_PROFILE_CAPS_*) at the end. */
typedef struct nvmlGpuInstanceProfileInfo_v3_st {
    unsigned int version;
    unsigned int id;
    unsigned int sliceCount;
    unsigned int instanceCount;
    unsigned int multiprocessorCount;
    unsigned int copyEngineCount;
    unsigned int decoderCount;
    unsigned int encoderCount;
    unsigned int jpegCount;
    unsigned int ofaCount;
    unsigned long long memorySizeMB;
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    unsigned int capabilities;
} nvmlGpuInstanceProfileInfo_v3_t;
#define nvmlGpuInstanceProfileInfo_v3 NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 3)

typedef struct nvmlGpuInstanceInfo_st {
    nvmlDevice_t device;
    unsigned int id;
    unsigned int profileId;
    nvmlGpuInstancePlacement_t placement;
} nvmlGpuInstanceInfo_t;

typedef struct nvmlComputeInstancePlacement_st {
    unsigned int start;
    unsigned int size;
} nvmlComputeInstancePlacement_t;

typedef struct nvmlComputeInstanceProfileInfo_st {
    unsigned int id;
    unsigned int sliceCount;
    unsigned int instanceCount;
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
} nvmlComputeInstanceProfileInfo_t;

typedef struct nvmlComputeInstanceProfileInfo_v2_st {
    unsigned int version;
    unsigned int id;
    unsigned int sliceCount;
    unsigned int instanceCount;
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
} nvmlComputeInstanceProfileInfo_v2_t;
#define nvmlComputeInstanceProfileInfo_v2 NVML_STRUCT_VERSION(ComputeInstanceProfileInfo, 2)

typedef struct nvmlComputeInstanceProfileInfo_v3_st {
    unsigned int version;
    unsigned int id;
    unsigned int sliceCount;
    unsigned int instanceCount;
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    unsigned int capabilities;
} nvmlComputeInstanceProfileInfo_v3_t;
#define nvmlComputeInstanceProfileInfo_v3 NVML_STRUCT_VERSION(ComputeInstanceProfileInfo, 3)

typedef struct nvmlComputeInstanceInfo_st {
    nvmlDevice_t device;
    nvmlGpuInstance_t gpuInstance;
    unsigned int id;
    unsigned int profileId;
    nvmlComputeInstancePlacement_t placement;
} nvmlComputeInstanceInfo_t;

/* The sizes nvml.h's layouts have on x86_64 and aarch64 (LP64). The ...ProfileInfoV
 * functions take a v2 or a v3 struct (by its version); the prototypes name v2 as
 * nvml.h does. */
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t");
_Static_assert(sizeof(nvmlGpuInstanceProfileInfo_t) == 48, "nvmlGpuInstanceProfileInfo_t");
_Static_assert(sizeof(nvmlGpuInstanceProfileInfo_v2_t) == 0x98, "nvmlGpuInstanceProfileInfo_v2_t");
_Static_assert(sizeof(nvmlComputeInstanceProfileInfo_t) == 36, "nvmlComputeInstanceProfileInfo_t");
_Static_assert(sizeof(nvmlComputeInstanceProfileInfo_v2_t) == 0x88, "nvmlComputeInstanceProfileInfo_v2_t");
_Static_assert(sizeof(nvmlGpuInstanceProfileInfo_v3_t) == 0x98, "nvmlGpuInstanceProfileInfo_v3_t");
_Static_assert(offsetof(nvmlGpuInstanceProfileInfo_v3_t, capabilities) == 144, "v3 capabilities");
_Static_assert(sizeof(nvmlComputeInstanceProfileInfo_v3_t) == 0x8C, "nvmlComputeInstanceProfileInfo_v3_t");
_Static_assert(sizeof(nvmlGpuInstanceInfo_t) == 24, "nvmlGpuInstanceInfo_t");
_Static_assert(sizeof(nvmlComputeInstanceInfo_t) == 32, "nvmlComputeInstanceInfo_t");
_Static_assert(offsetof(nvmlComputeInstanceInfo_t, gpuInstance) == 8, "gpuInstance offset");

/* NVML_FUNCTIONS(X): every function the simulated library exports, as
 * X(name, parameter list, argument count, arguments as integers). */
#define NVML_FUNCTIONS(X) \
    X(nvmlInit_v2, (void), 0, (0, 0, 0, 0, 0)) \
    X(nvmlInitWithFlags, (unsigned int flags), 1, (flags, 0, 0, 0, 0)) \
    X(nvmlShutdown, (void), 0, (0, 0, 0, 0, 0)) \
    X(nvmlSystemGetDriverVersion, (char *version, unsigned int length), 2, (P(version), length, 0, 0, 0)) \
    X(nvmlSystemGetNVMLVersion, (char *version, unsigned int length), 2, (P(version), length, 0, 0, 0)) \
    X(nvmlSystemGetCudaDriverVersion, (int *cudaDriverVersion), 1, (P(cudaDriverVersion), 0, 0, 0, 0)) \
    X(nvmlSystemGetCudaDriverVersion_v2, (int *cudaDriverVersion), 1, (P(cudaDriverVersion), 0, 0, 0, 0)) \
    X(nvmlDeviceGetCount_v2, (unsigned int *deviceCount), 1, (P(deviceCount), 0, 0, 0, 0)) \
    X(nvmlDeviceGetHandleByIndex_v2, (unsigned int index, nvmlDevice_t *device), 2, (index, P(device), 0, 0, 0)) \
    X(nvmlDeviceGetHandleByUUID, (const char *uuid, nvmlDevice_t *device), 2, (P(uuid), P(device), 0, 0, 0)) \
    X(nvmlDeviceGetHandleByPciBusId_v2, (const char *pciBusId, nvmlDevice_t *device), 2, (P(pciBusId), P(device), 0, 0, 0)) \
    X(nvmlDeviceGetName, (nvmlDevice_t device, char *name, unsigned int length), 3, (P(device), P(name), length, 0, 0)) \
    X(nvmlDeviceGetUUID, (nvmlDevice_t device, char *uuid, unsigned int length), 3, (P(device), P(uuid), length, 0, 0)) \
    X(nvmlDeviceGetPciInfo_v3, (nvmlDevice_t device, nvmlPciInfo_t *pci), 2, (P(device), P(pci), 0, 0, 0)) \
    X(nvmlDeviceGetArchitecture, (nvmlDevice_t device, nvmlDeviceArchitecture_t *arch), 2, (P(device), P(arch), 0, 0, 0)) \
    X(nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t *memory), 2, (P(device), P(memory), 0, 0, 0)) \
    X(nvmlDeviceGetPersistenceMode, (nvmlDevice_t device, nvmlEnableState_t *mode), 2, (P(device), P(mode), 0, 0, 0)) \
    X(nvmlDeviceGetNvLinkRemoteDeviceType, (nvmlDevice_t device, unsigned int link, unsigned int *pNvLinkDeviceType), 3, (P(device), link, P(pNvLinkDeviceType), 0, 0)) \
    X(nvmlDeviceGetMigMode, (nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode), 3, (P(device), P(currentMode), P(pendingMode), 0, 0)) \
    X(nvmlDeviceSetMigMode, (nvmlDevice_t device, unsigned int mode, nvmlReturn_t *activationStatus), 3, (P(device), mode, P(activationStatus), 0, 0)) \
    X(nvmlDeviceGetGpuInstanceProfileInfo, (nvmlDevice_t device, unsigned int profile, nvmlGpuInstanceProfileInfo_t *info), 3, (P(device), profile, P(info), 0, 0)) \
    X(nvmlDeviceGetGpuInstanceProfileInfoV, (nvmlDevice_t device, unsigned int profile, nvmlGpuInstanceProfileInfo_v2_t *info), 3, (P(device), profile, P(info), 0, 0)) \
    X(nvmlDeviceGetGpuInstanceProfileInfoByIdV, (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstanceProfileInfo_v2_t *info), 3, (P(device), profileId, P(info), 0, 0)) \
    X(nvmlDeviceGetGpuInstancePossiblePlacements_v2, (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstancePlacement_t *placements, unsigned int *count), 4, (P(device), profileId, P(placements), P(count), 0)) \
    X(nvmlDeviceGetGpuInstanceRemainingCapacity, (nvmlDevice_t device, unsigned int profileId, unsigned int *count), 3, (P(device), profileId, P(count), 0, 0)) \
    X(nvmlDeviceCreateGpuInstance, (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstance), 3, (P(device), profileId, P(gpuInstance), 0, 0)) \
    X(nvmlDeviceCreateGpuInstanceWithPlacement, (nvmlDevice_t device, unsigned int profileId, const nvmlGpuInstancePlacement_t *placement, nvmlGpuInstance_t *gpuInstance), 4, (P(device), profileId, P(placement), P(gpuInstance), 0)) \
    X(nvmlDeviceGetGpuInstances, (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstances, unsigned int *count), 4, (P(device), profileId, P(gpuInstances), P(count), 0)) \
    X(nvmlDeviceGetGpuInstanceById, (nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *gpuInstance), 3, (P(device), id, P(gpuInstance), 0, 0)) \
    X(nvmlGpuInstanceGetInfo, (nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info), 2, (P(gpuInstance), P(info), 0, 0, 0)) \
    X(nvmlGpuInstanceDestroy, (nvmlGpuInstance_t gpuInstance), 1, (P(gpuInstance), 0, 0, 0, 0)) \
    X(nvmlGpuInstanceGetComputeInstanceProfileInfo, (nvmlGpuInstance_t gpuInstance, unsigned int profile, unsigned int engProfile, nvmlComputeInstanceProfileInfo_t *info), 4, (P(gpuInstance), profile, engProfile, P(info), 0)) \
    X(nvmlGpuInstanceGetComputeInstanceProfileInfoV, (nvmlGpuInstance_t gpuInstance, unsigned int profile, unsigned int engProfile, nvmlComputeInstanceProfileInfo_v2_t *info), 4, (P(gpuInstance), profile, engProfile, P(info), 0)) \
    X(nvmlGpuInstanceGetComputeInstancePossiblePlacements, (nvmlGpuInstance_t gpuInstance, unsigned int profileId, nvmlComputeInstancePlacement_t *placements, unsigned int *count), 4, (P(gpuInstance), profileId, P(placements), P(count), 0)) \
    X(nvmlGpuInstanceGetComputeInstanceRemainingCapacity, (nvmlGpuInstance_t gpuInstance, unsigned int profileId, unsigned int *count), 3, (P(gpuInstance), profileId, P(count), 0, 0)) \
    X(nvmlGpuInstanceCreateComputeInstance, (nvmlGpuInstance_t gpuInstance, unsigned int profileId, nvmlComputeInstance_t *computeInstance), 3, (P(gpuInstance), profileId, P(computeInstance), 0, 0)) \
    X(nvmlGpuInstanceCreateComputeInstanceWithPlacement, (nvmlGpuInstance_t gpuInstance, unsigned int profileId, const nvmlComputeInstancePlacement_t *placement, nvmlComputeInstance_t *computeInstance), 4, (P(gpuInstance), profileId, P(placement), P(computeInstance), 0)) \
    X(nvmlGpuInstanceGetComputeInstances, (nvmlGpuInstance_t gpuInstance, unsigned int profileId, nvmlComputeInstance_t *computeInstances, unsigned int *count), 4, (P(gpuInstance), profileId, P(computeInstances), P(count), 0)) \
    X(nvmlGpuInstanceGetComputeInstanceById, (nvmlGpuInstance_t gpuInstance, unsigned int id, nvmlComputeInstance_t *computeInstance), 3, (P(gpuInstance), id, P(computeInstance), 0, 0)) \
    X(nvmlComputeInstanceGetInfo_v2, (nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info), 2, (P(computeInstance), P(info), 0, 0, 0)) \
    X(nvmlComputeInstanceDestroy, (nvmlComputeInstance_t computeInstance), 1, (P(computeInstance), 0, 0, 0, 0)) \
    X(nvmlDeviceGetMaxMigDeviceCount, (nvmlDevice_t device, unsigned int *count), 2, (P(device), P(count), 0, 0, 0)) \
    X(nvmlDeviceGetMigDeviceHandleByIndex, (nvmlDevice_t device, unsigned int index, nvmlDevice_t *migDevice), 3, (P(device), index, P(migDevice), 0, 0)) \
    X(nvmlDeviceIsMigDeviceHandle, (nvmlDevice_t device, unsigned int *isMigDevice), 2, (P(device), P(isMigDevice), 0, 0, 0)) \
    X(nvmlDeviceGetGpuInstanceId, (nvmlDevice_t device, unsigned int *id), 2, (P(device), P(id), 0, 0, 0)) \
    X(nvmlDeviceGetComputeInstanceId, (nvmlDevice_t device, unsigned int *id), 2, (P(device), P(id), 0, 0, 0)) \
    X(nvmlDeviceGetDeviceHandleFromMigDeviceHandle, (nvmlDevice_t migDevice, nvmlDevice_t *device), 2, (P(migDevice), P(device), 0, 0, 0)) \
    X(nvmlDeviceGetComputeRunningProcesses_v3, (nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos), 3, (P(device), P(infoCount), P(infos), 0, 0)) \
    X(nvmlDeviceGetComputeRunningProcesses_v2, (nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_v2_t *infos), 3, (P(device), P(infoCount), P(infos), 0, 0)) \
    X(nvmlDeviceGetVirtualizationMode, (nvmlDevice_t device, unsigned int *pVirtualMode), 2, (P(device), P(pVirtualMode), 0, 0, 0))

#define NVML_DECLARE(name, params, argc, args) nvmlReturn_t name params;
NVML_FUNCTIONS(NVML_DECLARE)
#undef NVML_DECLARE
const char *nvmlErrorString(nvmlReturn_t result);

#ifdef __cplusplus
}
#endif
#endif
