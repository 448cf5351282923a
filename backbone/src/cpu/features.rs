//! The CPU features the kernels need, checked here and nowhere else. Every `unsafe`
//! call of a `#[target_feature]` function names the check that made it sound; the
//! standard library caches the answers, so a check costs a load and a compare.

/// AVX-512F: the f32 micro-kernels, attention, GELU, softmax and the bottleneck rows.
#[inline]
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX-512F and BW: the vector quantisation of activation rows.
#[inline]
pub fn avx512_bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512() && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX-512F, BW and VNNI: the int8 micro-kernels (`vpdpbusd`).
#[inline]
pub fn avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_bw() && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 and FMA: the element-wise loops compiled a second time (see [`multiversion`]).
#[inline]
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `pub fn $name(args)` that runs `$body(args)` compiled for AVX2 + FMA where the CPU
/// has them ([`avx2_fma`]) and for the baseline target otherwise: the element-wise
/// loops are written branch-free so that both compilations vectorise.
macro_rules! multiversion {
    ($vis:vis $name:ident, $body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::cpu::features::avx2_fma() {
                    // SAFETY: `avx2_fma()` just said the CPU has what `fast` was
                    // compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
