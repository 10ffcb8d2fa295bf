#pragma once

namespace mto {

// Version of mto, recorded in every modelopt state. Restoring a state whose major.minor
// differs warns that compatibility is not guaranteed.
inline constexpr char kModeloptVersion[] = "0.1.0";

}  // namespace mto
