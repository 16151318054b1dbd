"""The autocast a run trains under: its amp setting resolved on its device ("auto": bf16 where the device multiplies
bf16 matrices natively, else float32)."""
import torch


def resolve_amp(amp, device, cpu_bf16=None, cuda_bf16=None):
    """The autocast a run uses for its amp setting: "bf16" or None (float32); "auto" is bf16 where the device has
    native bf16 matmuls (a CPU with AMX-BF16 or AVX512-BF16: cpu_bf16(); a GPU for which
    torch.cuda.is_bf16_supported(including_emulation=False)), else None."""
    if amp != "auto":
        return "bf16" if amp == "bf16" else None
    if device.type == "cuda":
        native = (cuda_bf16 or (lambda: torch.cuda.is_bf16_supported(including_emulation=False)))()
    elif device.type == "cpu":
        native = (cpu_bf16 or cpu_has_native_bf16)()
    else:
        native = False
    return "bf16" if native else None


def cpu_has_native_bf16(capability=None, cpuinfo="/proc/cpuinfo"):
    """Whether this CPU multiplies bf16 matrices natively: torch's CPU capability (capability: as
    torch.backends.cpu.get_cpu_capability() says) is AVX512 or AMX, and the CPU has AMX-BF16 or AVX512-BF16 (the
    flags of cpuinfo). Elsewhere torch converts bf16 to float32 for a matmul, which is slower than float32."""
    cap = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if not cap.startswith(("AVX512", "AMX")):
        return False
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False
