#include "opt/nn/uninitialized.h"

namespace mto {
namespace nn {
namespace {

thread_local int uninitialized_depth = 0;

}  // namespace

UninitializedParameters::UninitializedParameters() { ++uninitialized_depth; }

UninitializedParameters::~UninitializedParameters() { --uninitialized_depth; }

bool parameters_uninitialized() { return uninitialized_depth > 0; }

}  // namespace nn
}  // namespace mto
