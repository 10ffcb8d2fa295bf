// Fuzzes the reading of modelopt_state.pb as restore does it: the ModeloptState protobuf,
// then every mode it records (the registry lookup, the config and metadata in their Any
// fields, and the mode's restore) replayed onto the model the seed checkpoints were written
// from, a fashion_mlp with 4 hidden units. Every input must restore or throw one of mto's
// errors (a message naming the mode, the field or the quantizer); a LibTorch error, a
// parser's own exception or a crash is a bug.
#include <c10/util/Exception.h>
#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "serialization/checkpoint_error.h"
#include "serialization/modelopt_state.pb.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

// Drops LibTorch's warnings (a checkpoint of another version warns on every input).
class QuietWarnings : public c10::WarningHandler {
 public:
  void process(const c10::SourceLocation&, const std::string&, const bool) override {}
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static QuietWarnings quiet;
  c10::Warning::set_warning_handler(&quiet);
  // Protobuf logs every string field that is not UTF-8; the parse fails, which is enough.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mto::ModeloptState state;
  if (!state.ParseFromArray(data, static_cast<int>(size))) return 0;
  try {
    mto::ModulePtr model = mto::ModelLike("fashion_mlp", {{"hidden", {4}}}).build();
    mto::restore_from_modelopt_state(model, state);
  } catch (const mto::ApplyModeError&) {
  } catch (const mto::ConfigError&) {
  } catch (const mto::ModeError&) {
  } catch (const mto::StateError&) {
  } catch (const mto::CheckpointError&) {
  } catch (const std::exception& e) {
    mto::fuzz::fail("restore threw an error that is not mto's", e);
  }
  return 0;
}
