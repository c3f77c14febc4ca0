#pragma once
/// @file
/// @brief Header-only (the default) or separate compilation, as Asio does it.
///
/// psync is header-only: a program includes its headers and links nothing. The
/// non-template functions of its heaviest parts (checkpoints, the wire codec, the
/// update codecs, the optimizers, the trace, the CRC, the policy and optimizer
/// parsers) are defined in `psync/impl/*.ipp`, which every header includes by
/// default. A program with many translation units can compile those bodies once
/// instead of in each of them:
/// - define `PSYNC_SEPARATE_COMPILATION` for the **whole** program (every
///   translation unit that includes a psync header: mixing the two modes in one
///   program defines the same functions twice);
/// - compile `#include <psync/src.hpp>` in exactly one of its source files.
///
/// Then a translation unit that includes `<psync/psync.hpp>` parses declarations
/// where it parsed bodies (docs/design.md gives the measured compile times).
/// Templates (`Server`, `Worker`, the cores, the transports) stay in the headers
/// either way: they are compiled where they are instantiated.

#if defined(PSYNC_SEPARATE_COMPILATION)
#define PSYNC_HEADER_ONLY 0
/// @brief Declares and defines a non-template function of psync: empty under
/// separate compilation (one definition, in the translation unit that compiles `psync/src.hpp`).
#define PSYNC_DECL
#else
#define PSYNC_HEADER_ONLY 1
/// @brief Declares and defines a non-template function of psync: `inline` when header-only.
#define PSYNC_DECL inline
#endif
