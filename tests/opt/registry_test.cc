// Mode registries: one-line registration, lookup in one or any registry, and the errors
// for unknown, duplicate and ambiguous names and for relation sets naming unknown modes.
#include <gtest/gtest.h>

#include <google/protobuf/struct.pb.h>

#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_manager.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/errors.h"

namespace mto {
namespace {

using test::error_of;

// A mode with configurable name and relations, for registry tests.
class FakeMode : public ModeDescriptor {
 public:
  explicit FakeMode(std::string name, std::optional<ModeSet> next = std::nullopt,
                    std::optional<std::string> export_mode = std::nullopt)
      : name_(std::move(name)), next_(std::move(next)), export_(std::move(export_mode)) {}
  std::string name() const override { return name_; }
  MessagePtr config_class() const override { return std::make_unique<google::protobuf::Struct>(); }
  std::optional<ModeSet> next_modes() const override { return next_; }
  std::optional<std::string> export_mode() const override { return export_; }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }

 private:
  std::string name_;
  std::optional<ModeSet> next_;
  std::optional<std::string> export_;
};

// A mode that the macro registers in two registries.
class TwiceRegisteredMode : public FakeMode {
 public:
  TwiceRegisteredMode() : FakeMode("fake_registered_twice") {}
};
MTO_REGISTER_MODE(fake_macro_a, TwiceRegisteredMode);
MTO_REGISTER_MODE(fake_macro_b, TwiceRegisteredMode);

TEST(RegistryTest, TheMacroRegistersOneModeInSeveralRegistries) {
  const auto mode = ModeRegistry::get_from_any("fake_registered_twice");
  EXPECT_EQ(ModeRegistry::get_registry("fake_macro_a").get("fake_registered_twice"), mode);
  EXPECT_EQ(ModeRegistry::get_registry("fake_macro_b").get("fake_registered_twice"), mode);
  EXPECT_TRUE(ModeloptStateManager::is_converted(*apply_mode(ModelLike("test_mlp").build(), "fake_registered_twice")));
}

TEST(RegistryTest, MacroRegistersModesInTheirRegistries) {
  EXPECT_TRUE(ModeRegistry::get_registry("test_quantization").contains("test_quantize"));
  EXPECT_EQ(ModeRegistry::get_registry("test_nas").mode_names(),
            (std::vector<std::string>{"test_export_nas", "test_nas"}));
  EXPECT_EQ(ModeRegistry::get_registry("test_nas").get("test_nas")->name(), "test_nas");
  EXPECT_EQ(ModeRegistry::get_from_any("test_sparse")->name(), "test_sparse");
  EXPECT_TRUE(ModeRegistry::contains_in_any("test_kd"));
  EXPECT_FALSE(ModeRegistry::contains_in_any("no_such_mode"));
  auto names = ModeRegistry::registry_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "test_misc"), names.end());
}

TEST(RegistryTest, UnknownModesAreReported) {
  EXPECT_EQ(error_of([] { ModeRegistry::get_registry("test_nas").get("test_quantize"); }),
            "Mode 'test_quantize' not found in registry 'test_nas'. Its modes: test_export_nas, "
            "test_nas.");
  std::string any = error_of([] { ModeRegistry::get_from_any("no_such_mode"); });
  EXPECT_EQ(any.rfind("Mode 'no_such_mode' not found in any registry. Known modes: ", 0), 0u) << any;
  EXPECT_NE(any.find("test_quantize"), std::string::npos);
  EXPECT_THROW(apply_mode(ModelLike("test_mlp").build(), "no_such_mode"), ModeError);
}

TEST(RegistryTest, DuplicateNameInOneRegistryIsAnError) {
  auto& registry = ModeRegistry::get_registry("test_quantization");
  EXPECT_EQ(error_of([&] { registry.register_mode(std::make_shared<FakeMode>("test_quantize")); }),
            "Mode 'test_quantize' is already registered in registry 'test_quantization'.");
  EXPECT_EQ(registry.get("test_quantize")->name(), "test_quantize");
}

TEST(RegistryTest, OneModeMaySitInSeveralRegistries) {
  auto shared = std::make_shared<FakeMode>("fake_shared");
  ModeRegistry::get_registry("fake_a").register_mode(shared);
  ModeRegistry::get_registry("fake_b").register_mode(shared);
  EXPECT_EQ(ModeRegistry::get_from_any("fake_shared"), shared);
  ModeRegistry::get_registry("fake_a").remove_mode("fake_shared");
  ModeRegistry::get_registry("fake_b").remove_mode("fake_shared");
  EXPECT_FALSE(ModeRegistry::contains_in_any("fake_shared"));
}

TEST(RegistryTest, DifferentModesOfOneNameAreAmbiguousInAnyRegistry) {
  auto first = std::make_shared<FakeMode>("fake_twin");
  auto second = std::make_shared<FakeMode>("fake_twin");
  ModeRegistry::get_registry("fake_a").register_mode(first);
  ModeRegistry::get_registry("fake_b").register_mode(second);
  EXPECT_EQ(error_of([] { ModeRegistry::get_from_any("fake_twin"); }),
            "Mode 'fake_twin' is ambiguous: registries 'fake_a' and 'fake_b' hold different "
            "modes of that name; pass a registry.");
  EXPECT_EQ(ModeRegistry::get_registry("fake_b").get("fake_twin"), second);
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "fake_twin",
                               &ModeRegistry::get_registry("fake_a"));
  EXPECT_TRUE(ModeloptStateManager::is_converted(*model));
  ModeRegistry::get_registry("fake_a").remove_mode("fake_twin");
  ModeRegistry::get_registry("fake_b").remove_mode("fake_twin");
}

TEST(RegistryTest, ApplyModeLooksOnlyInTheGivenRegistry) {
  EXPECT_THROW(apply_mode(ModelLike("test_mlp").build(), "test_quantize",
                          &ModeRegistry::get_registry("test_nas")),
               ModeError);
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_nas",
                               &ModeRegistry::get_registry("test_nas"));
  EXPECT_TRUE(ModeloptStateManager::is_converted(*model));
}

TEST(RegistryTest, RelationsNamingUnknownModesAreRejected) {
  auto& registry = ModeRegistry::get_registry("fake_a");
  registry.register_mode(std::make_shared<FakeMode>("fake_typo", ModeSet{"test_quantize", "expot_nas"}));
  const std::string expected =
      "Mode 'fake_typo' names 'expot_nas' in its next_modes, but no registry holds a mode of "
      "that name.";
  EXPECT_EQ(error_of([] { ModeRegistry::check_relations(); }), expected);
  EXPECT_EQ(error_of([] { ModeRegistry::get_from_any("test_nas"); }), expected);
  registry.remove_mode("fake_typo");

  registry.register_mode(std::make_shared<FakeMode>("fake_export_typo", std::nullopt, "export_nothing"));
  EXPECT_EQ(error_of([] { ModeRegistry::get_registry("test_nas").get("test_nas"); }),
            "Mode 'fake_export_typo' names 'export_nothing' in its export_mode, but no registry "
            "holds a mode of that name.");
  registry.remove_mode("fake_export_typo");
  EXPECT_NO_THROW(ModeRegistry::check_relations());
  EXPECT_EQ(ModeRegistry::get_from_any("test_nas")->name(), "test_nas");
}

TEST(RegistryTest, RemovingAnAbsentModeIsAnError) {
  EXPECT_EQ(error_of([] { ModeRegistry::get_registry("fake_a").remove_mode("nothing"); }),
            "Cannot remove mode 'nothing': registry 'fake_a' does not hold it.");
}

TEST(RegistryTest, CompatibilityAsNextModeUsesNextAndProhibitedSets) {
  auto sparse = ModeRegistry::get_from_any("test_sparse");
  auto quantize = ModeRegistry::get_from_any("test_quantize");
  EXPECT_NO_THROW(quantize->assert_compatibility_as_next_mode_of(*sparse));
  EXPECT_NO_THROW(quantize->assert_compatibility_as_next_mode_of("test_nas"));
  EXPECT_EQ(error_of([&] { sparse->assert_compatibility_as_next_mode_of(*quantize); }),
            "test_quantize does not allow test_sparse to be its next mode.");
  EXPECT_EQ(error_of([&] { quantize->assert_compatibility_as_next_mode_of("test_terminal"); }),
            "Cannot add test_quantize after test_terminal! Next modes of test_terminal are set().");
  EXPECT_THROW(quantize->assert_compatibility_as_next_mode_of("no_such_mode"), ModeError);
}

}  // namespace
}  // namespace mto
