// Tensor parallelism (tensor_parallel_ops, global_init, the parallel layers of opt/nn) at
// tp = the world size of whatever world the test is launched in (one rank, or mpirun ranks),
// each checked against the same layers over a one-rank group, computed on every rank.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "distributed/distributed_error.h"
#include "distributed/global_init.h"
#include "distributed/mesh.h"
#include "distributed/tensor_parallel_ops.h"
#include "distributed/world.h"
#include "opt/nn/column_parallel_linear.h"
#include "opt/nn/dynamic_layer.h"
#include "opt/nn/linear.h"
#include "opt/nn/row_parallel_linear.h"
#include "opt/nn/vocab_parallel_embedding.h"

namespace mto {
namespace {

// The tensor-parallel group (every rank of the world) and a one-rank group for references.
// Made once, in the same order on every rank (collective).
struct Groups : ::testing::Environment {
  void SetUp() override {
    at::set_num_threads(1);
    tp = Mesh::create(world(), world()->world_size())->tp();
    solo = Mesh::create(world()->split(world()->rank(), 0), 1)->tp();
  }
  // Frees the groups while MPI is up (the world finalizes it at exit, before static members
  // would be destroyed).
  void TearDown() override {
    tp.reset();
    solo.reset();
  }
  static inline std::shared_ptr<Communicator> tp;
  static inline std::shared_ptr<Communicator> solo;
};
::testing::Environment* const groups = ::testing::AddGlobalTestEnvironment(new Groups);

// A backend that claims `size` ranks and refuses to communicate: enough to build layers
// whose size checks must fail before any collective.
class ClaimedSizeBackend : public Backend {
 public:
  explicit ClaimedSizeBackend(int size) : size_(size) {}
  int rank() const override { return 0; }
  int world_size() const override { return size_; }
  std::string name() const override { return "claimed"; }
  void all_reduce(void*, size_t, DataType, ReduceOp, std::chrono::milliseconds) override { refuse(); }
  void broadcast(void*, size_t, int, std::chrono::milliseconds) override { refuse(); }
  void all_gather(const void*, void*, size_t, std::chrono::milliseconds) override { refuse(); }
  void all_to_all(const std::vector<SendBuffer>&, const std::vector<ReceiveBuffer>&,
                  std::chrono::milliseconds) override {
    refuse();
  }
  void barrier(std::chrono::milliseconds) override { refuse(); }
  std::unique_ptr<Backend> split(int, int, std::chrono::milliseconds) override { refuse(); }

 private:
  [[noreturn]] static void refuse() { throw std::logic_error("ClaimedSizeBackend cannot communicate"); }
  int size_;
};

// A transform holding a buffer "_amax", for slice_of.
struct AmaxTransform : nn::TransformImpl {
  explicit AmaxTransform(at::Tensor amax) { register_buffer("_amax", std::move(amax)); }
  at::Tensor forward(const at::Tensor& x) override { return x; }
};

class TensorParallelTest : public ::testing::Test {
 protected:
  // Chunk `index` of `parts` equal chunks of `t` along `dim`.
  static at::Tensor chunk(const at::Tensor& t, int64_t dim, int index, int parts) {
    const int64_t size = t.size(dim) / parts;
    return t.narrow(dim, index * size, size);
  }
  at::Tensor mine(const at::Tensor& t, int64_t dim) const { return chunk(t, dim, rank, n); }

  // The same input on every rank, a leaf that requires a gradient.
  static at::Tensor input(std::vector<int64_t> shape, uint64_t seed) {
    at::Tensor x = at::empty(shape);
    global_normal_(x, seed, 0.0, 1.0);
    return x.requires_grad_();
  }

  static void expect_close(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
    ASSERT_TRUE(actual.defined()) << what;
    ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
    EXPECT_TRUE(at::allclose(actual, expected, /*rtol=*/1e-5, /*atol=*/1e-5))
        << what << ": largest difference " << (actual - expected).abs().max().item<double>();
  }

  std::shared_ptr<Communicator> tp = Groups::tp;
  std::shared_ptr<Communicator> solo = Groups::solo;
  int rank = tp->rank();
  int n = tp->world_size();
};

TEST_F(TensorParallelTest, GlobalInitOfASliceIsTheSliceOfTheWholeTensor) {
  for (at::ScalarType type : {at::kFloat, at::kDouble}) {
    const at::Tensor uniform = at::empty({6, 8}, type);
    const at::Tensor normal = at::empty({6, 8}, type);
    global_uniform_(uniform, 42, -0.5, 0.5);
    global_normal_(normal, 42, 1.0, 2.0);
    for (int64_t dim : {0, 1}) {
      for (int parts : {2, 3}) {
        if (uniform.size(dim) % parts != 0) continue;
        for (int index = 0; index < parts; ++index) {
          const int64_t rows = uniform.size(dim) / parts;
          std::vector<int64_t> shape = {6, 8};
          shape[dim] = rows;
          const TensorSlice slice{{6, 8}, dim, index * rows};
          at::Tensor local = at::empty(shape, type);
          global_uniform_(local, slice, 42, -0.5, 0.5);
          EXPECT_TRUE(local.equal(chunk(uniform, dim, index, parts))) << "dim " << dim << " part " << index;
          global_normal_(local, slice, 42, 1.0, 2.0);
          EXPECT_TRUE(local.equal(chunk(normal, dim, index, parts))) << "dim " << dim << " part " << index;
        }
      }
    }
    // A non-contiguous tensor gets the same values.
    at::Tensor transposed = at::empty({8, 6}, type).t();
    global_uniform_(transposed, 42, -0.5, 0.5);
    EXPECT_TRUE(transposed.equal(uniform));
  }
}

TEST_F(TensorParallelTest, GlobalInitIsInRangeAndDependsOnTheSeed) {
  at::Tensor a = at::empty({100, 100});
  at::Tensor b = at::empty({100, 100});
  global_uniform_(a, 1, -0.25, 0.75);
  global_uniform_(b, 2, -0.25, 0.75);
  EXPECT_GE(a.min().item<float>(), -0.25f);
  EXPECT_LE(a.max().item<float>(), 0.75f);
  EXPECT_NEAR(a.mean().item<double>(), 0.25, 0.02);
  EXPECT_FALSE(a.equal(b));
  global_normal_(a, 1, 3.0, 2.0);
  global_normal_(b, 2, 3.0, 2.0);
  EXPECT_NEAR(a.mean().item<double>(), 3.0, 0.1);
  EXPECT_NEAR(a.std().item<double>(), 2.0, 0.1);
  EXPECT_FALSE(a.equal(b));
  EXPECT_NE(seed_for(1, "weight"), seed_for(1, "bias"));
  EXPECT_NE(seed_for(1, "weight"), seed_for(2, "weight"));
  EXPECT_EQ(seed_for(1, "weight"), seed_for(1, "weight"));
}

TEST_F(TensorParallelTest, GlobalInitRejectsASliceThatDoesNotFit) {
  at::Tensor local = at::empty({3, 8});
  EXPECT_THROW(global_uniform_(local, TensorSlice{{6, 8}, 0, 4}, 1, 0, 1), std::invalid_argument);
  EXPECT_THROW(global_uniform_(local, TensorSlice{{6, 9}, 0, 0}, 1, 0, 1), std::invalid_argument);
  EXPECT_THROW(global_uniform_(local, TensorSlice{{6, 8}, 2, 0}, 1, 0, 1), std::invalid_argument);
  EXPECT_THROW(global_uniform_(at::empty({3, 8}, at::kInt), TensorSlice{{6, 8}, 0, 0}, 1, 0, 1),
               std::invalid_argument);
}

TEST_F(TensorParallelTest, CollectivesAndTheirGradients) {
  const double total = n * (n + 1) / 2.0;
  // reduce: the sum, out of place; backward passes the gradient through.
  at::Tensor x = at::full({2, 3}, rank + 1.0).requires_grad_();
  at::Tensor sum = reduce_from_tensor_parallel(x, *tp);
  EXPECT_TRUE(sum.equal(at::full({2, 3}, total)));
  EXPECT_TRUE(x.equal(at::full({2, 3}, rank + 1.0)));
  (sum * 2).sum().backward();
  EXPECT_TRUE(x.grad().equal(at::full({2, 3}, 2.0)));
  // gather: every rank's x in rank order along the last dim; backward: this rank's chunk.
  x.mutable_grad() = at::Tensor();
  at::Tensor gathered = gather_from_tensor_parallel(x, *tp);
  ASSERT_EQ(gathered.sizes().vec(), (std::vector<int64_t>{2, 3 * n}));
  for (int r = 0; r < n; ++r) EXPECT_TRUE(chunk(gathered, 1, r, n).equal(at::full({2, 3}, r + 1.0)));
  const at::Tensor weights = at::arange(6 * n, at::kFloat).reshape({2, 3 * n});
  (gathered * weights).sum().backward();
  EXPECT_TRUE(x.grad().equal(mine(weights, 1)));
  // copy: identity; backward sums the gradient over the group.
  x.mutable_grad() = at::Tensor();
  at::Tensor copy = copy_to_tensor_parallel(x, *tp);
  EXPECT_TRUE(copy.equal(x));
  (copy * (rank + 1.0)).sum().backward();
  EXPECT_TRUE(x.grad().equal(at::full({2, 3}, total)));
  // scatter: this rank's chunk; backward gathers the gradient.
  at::Tensor whole = at::arange(2 * 2 * n, at::kFloat).reshape({2, 2 * n}).requires_grad_();
  at::Tensor part = scatter_to_tensor_parallel(whole, *tp);
  EXPECT_TRUE(part.equal(mine(whole, 1)));
  (part * (rank + 1.0)).sum().backward();
  for (int r = 0; r < n; ++r) EXPECT_TRUE(chunk(whole.grad(), 1, r, n).equal(at::full({2, 2}, r + 1.0)));
}

TEST_F(TensorParallelTest, WithOneRankTheOpsAreTheIdentity) {
  const at::Tensor x = at::ones({2, 3});
  EXPECT_TRUE(copy_to_tensor_parallel(x, *solo).is_same(x));
  EXPECT_TRUE(reduce_from_tensor_parallel(x, *solo).is_same(x));
  EXPECT_TRUE(gather_from_tensor_parallel(x, *solo).is_same(x));
  EXPECT_TRUE(scatter_to_tensor_parallel(x, *solo).is_same(x));
  EXPECT_EQ(solo->stats().collectives, 0u);
}

TEST_F(TensorParallelTest, ColumnParallelLinearEqualsTheUnsplitLayer) {
  for (bool gather_output : {false, true}) {
    SCOPED_TRACE(gather_output ? "gather_output" : "local output");
    const auto options = nn::ColumnParallelLinearOptions(6, 4 * n).seed(11).gather_output(gather_output);
    nn::ColumnParallelLinear layer(nn::ColumnParallelLinearOptions(options).tp(tp));
    nn::ColumnParallelLinear reference(nn::ColumnParallelLinearOptions(options).tp(solo));
    EXPECT_TRUE(layer->weight.equal(mine(reference->weight, 0)));
    EXPECT_TRUE(layer->bias.equal(mine(reference->bias, 0)));
    EXPECT_EQ(layer->options.out_features(), 4);

    const at::Tensor x = input({3, 6}, 5);
    const at::Tensor x_reference = x.detach().clone().requires_grad_();
    at::Tensor y = layer(x);
    EXPECT_EQ(y.size(-1), gather_output ? 4 * n : 4);
    if (!gather_output) y = gather_from_tensor_parallel(y, *tp);
    const at::Tensor y_reference = reference(x_reference);
    expect_close(y, y_reference, "output");
    (y * y).sum().backward();
    (y_reference * y_reference).sum().backward();
    expect_close(x.grad(), x_reference.grad(), "input gradient");
    expect_close(layer->weight.grad(), mine(reference->weight.grad(), 0), "weight gradient");
    expect_close(layer->bias.grad(), mine(reference->bias.grad(), 0), "bias gradient");
  }
}

TEST_F(TensorParallelTest, RowParallelLinearEqualsTheUnsplitLayer) {
  for (bool input_is_parallel : {true, false}) {
    SCOPED_TRACE(input_is_parallel ? "parallel input" : "whole input");
    const auto options = nn::RowParallelLinearOptions(2 * n, 5).seed(12).input_is_parallel(input_is_parallel);
    nn::RowParallelLinear layer(nn::RowParallelLinearOptions(options).tp(tp));
    nn::RowParallelLinear reference(nn::RowParallelLinearOptions(options).tp(solo));
    EXPECT_TRUE(layer->weight.equal(mine(reference->weight, 1)));
    EXPECT_TRUE(layer->bias.equal(reference->bias));
    EXPECT_EQ(layer->options.in_features(), 2);

    const at::Tensor x = input({3, 2 * n}, 6);
    const at::Tensor x_reference = x.detach().clone().requires_grad_();
    const at::Tensor y = layer(input_is_parallel ? mine(x, 1) : x);
    const at::Tensor y_reference = reference(x_reference);
    expect_close(y, y_reference, "output");
    (y * y).sum().backward();
    (y_reference * y_reference).sum().backward();
    // With a parallel input each rank's x gets the gradient of its own chunk only.
    if (input_is_parallel) {
      expect_close(mine(x.grad(), 1), mine(x_reference.grad(), 1), "input gradient");
    } else {
      expect_close(x.grad(), x_reference.grad(), "input gradient");
    }
    expect_close(layer->weight.grad(), mine(reference->weight.grad(), 1), "weight gradient");
    expect_close(layer->bias.grad(), reference->bias.grad(), "bias gradient");
  }
}

TEST_F(TensorParallelTest, ColumnThenRowEqualsTheUnsplitMlp) {
  struct Mlp {
    Mlp(std::shared_ptr<Communicator> group, int n)
        : fc1(nn::ColumnParallelLinearOptions(6, 4 * n).seed(21).tp(group)),
          fc2(nn::RowParallelLinearOptions(4 * n, 3).seed(22).tp(group)) {}
    at::Tensor operator()(const at::Tensor& x) { return fc2(at::gelu(fc1(x))); }
    nn::ColumnParallelLinear fc1;
    nn::RowParallelLinear fc2;
  };
  Mlp mlp(tp, n);
  Mlp reference(solo, n);
  const at::Tensor x = input({2, 3, 6}, 7);
  const at::Tensor x_reference = x.detach().clone().requires_grad_();
  const at::Tensor y = mlp(x);
  const at::Tensor y_reference = reference(x_reference);
  expect_close(y, y_reference, "output");
  (y * y).sum().backward();
  (y_reference * y_reference).sum().backward();
  expect_close(x.grad(), x_reference.grad(), "input gradient");
  expect_close(mlp.fc1->weight.grad(), mine(reference.fc1->weight.grad(), 0), "fc1 weight gradient");
  expect_close(mlp.fc1->bias.grad(), mine(reference.fc1->bias.grad(), 0), "fc1 bias gradient");
  expect_close(mlp.fc2->weight.grad(), mine(reference.fc2->weight.grad(), 1), "fc2 weight gradient");
  expect_close(mlp.fc2->bias.grad(), reference.fc2->bias.grad(), "fc2 bias gradient");
}

TEST_F(TensorParallelTest, VocabParallelEmbeddingEqualsTheUnsplitTable) {
  const auto options = nn::VocabParallelEmbeddingOptions(3 * n, 4).seed(31);
  nn::VocabParallelEmbedding table(nn::VocabParallelEmbeddingOptions(options).tp(tp));
  nn::VocabParallelEmbedding reference(nn::VocabParallelEmbeddingOptions(options).tp(solo));
  EXPECT_TRUE(table->weight.equal(mine(reference->weight, 0)));
  EXPECT_EQ(table->vocab_begin(), 3 * rank);

  // Every token id, in a batch [2, 3n], some twice.
  const at::Tensor tokens = at::arange(3 * n, at::kLong).flip(0).repeat({2, 1});
  const at::Tensor y = table(tokens);
  const at::Tensor y_reference = reference(tokens);
  EXPECT_TRUE(y_reference.equal(at::embedding(reference->weight, tokens)));
  expect_close(y, y_reference, "output");
  (y * y).sum().backward();
  (y_reference * y_reference).sum().backward();
  expect_close(table->weight.grad(), mine(reference->weight.grad(), 0), "weight gradient");
}

TEST_F(TensorParallelTest, VocabParallelEmbeddingScalesItsDrawsByInitStd) {
  const auto options = nn::VocabParallelEmbeddingOptions(3 * n, 4).seed(31);
  nn::VocabParallelEmbedding table(nn::VocabParallelEmbeddingOptions(options).init_std(0.25).tp(tp));
  nn::VocabParallelEmbedding reference(nn::VocabParallelEmbeddingOptions(options).tp(solo));
  // A power of two scales each draw exactly.
  EXPECT_TRUE(table->weight.equal(mine(reference->weight, 0) * 0.25));
}

TEST_F(TensorParallelTest, WithOneRankTheLayersComputeWhatLinearComputes) {
  nn::ColumnParallelLinear column(nn::ColumnParallelLinearOptions(6, 5).seed(1).tp(solo));
  nn::RowParallelLinear row(nn::RowParallelLinearOptions(6, 5).seed(2).tp(solo));
  const double bound = 1 / std::sqrt(6.0);
  for (const at::Tensor& t : {column->weight, column->bias, row->weight, row->bias}) {
    EXPECT_LE(t.abs().max().item<double>(), bound);
  }
  const at::Tensor x = input({3, 6}, 8).detach();
  nn::Linear linear(6, 5);
  linear->weight.detach().copy_(column->weight);
  linear->bias.detach().copy_(column->bias);
  EXPECT_TRUE(column(x).equal(linear(x)));
  linear->weight.detach().copy_(row->weight);
  linear->bias.detach().copy_(row->bias);
  expect_close(row(x), linear(x), "row");
  // Without a group, a layer is split over the default mesh's.
  nn::ColumnParallelLinear defaulted(nn::ColumnParallelLinearOptions(6, 5));
  EXPECT_EQ(defaulted->parallel_options.tp(), default_mesh()->tp());
}

TEST_F(TensorParallelTest, SliceOfNamesWhereEachTensorSits) {
  // Column: in = out / tp = 4, so an input amax has as many entries as the local rows.
  nn::ColumnParallelLinear column(nn::ColumnParallelLinearOptions(4, 4 * n).tp(tp));
  column->as_module().register_buffer("_weight_mask", at::ones({4, 4}, at::kBool));
  column->add_transform(nn::Slot::kInput, "input_quantizer", std::make_shared<AmaxTransform>(at::ones({4})));
  // On a group of one rank every tensor is whole, whatever shape modes gave it since.
  const auto check = [this](std::optional<TensorSlice> slice, std::vector<int64_t> shape, int64_t dim,
                            int64_t offset) {
    if (n == 1) {
      EXPECT_FALSE(slice.has_value());
      return;
    }
    ASSERT_TRUE(slice.has_value());
    EXPECT_EQ(slice->global_shape, shape);
    EXPECT_EQ(slice->dim, dim);
    EXPECT_EQ(slice->offset, offset);
  };
  check(column->slice_of("weight", column->weight), {4 * n, 4}, 0, 4 * rank);
  check(column->slice_of("bias", column->bias), {4 * n}, 0, 4 * rank);
  check(column->slice_of("_weight_mask", at::ones({4, 4}, at::kBool)), {4 * n, 4}, 0, 4 * rank);
  check(column->slice_of("weight_quantizer._amax", at::ones({4, 1})), {4 * n, 1}, 0, 4 * rank);
  check(column->slice_of("weight_quantizer._amax", at::ones({4, 2})), {4 * n, 2}, 0, 4 * rank);
  check(column->slice_of("output_quantizer._amax", at::ones({4})), {4 * n}, 0, 4 * rank);
  EXPECT_FALSE(column->slice_of("weight_quantizer._amax", at::ones({})).has_value());
  EXPECT_FALSE(column->slice_of("input_quantizer._amax", at::ones({4})).has_value());

  nn::RowParallelLinear row(nn::RowParallelLinearOptions(3 * n, 5).tp(tp));
  row->add_transform(nn::Slot::kInput, "input_quantizer", std::make_shared<AmaxTransform>(at::ones({3})));
  check(row->slice_of("weight", row->weight), {5, 3 * n}, 1, 3 * rank);
  check(row->slice_of("_weight_mask", at::ones({5, 3}, at::kBool)), {5, 3 * n}, 1, 3 * rank);
  check(row->slice_of("input_quantizer._amax", at::ones({3})), {3 * n}, 0, 3 * rank);
  EXPECT_FALSE(row->slice_of("bias", row->bias).has_value());
  EXPECT_FALSE(row->slice_of("weight_quantizer._amax", at::ones({5, 1})).has_value());
  EXPECT_FALSE(row->slice_of("output_quantizer._amax", at::ones({5})).has_value());

  nn::VocabParallelEmbedding table(nn::VocabParallelEmbeddingOptions(2 * n, 3).tp(tp));
  check(table->slice_of("weight", table->weight), {2 * n, 3}, 0, 2 * rank);
  EXPECT_FALSE(table->slice_of("other", at::ones({2})).has_value());
}

TEST_F(TensorParallelTest, SizesTheGroupDoesNotDivideAreRefused) {
  const auto three = std::make_shared<Communicator>(std::make_unique<ClaimedSizeBackend>(3),
                                                    std::chrono::milliseconds(1000));
  const auto expect_refused = [](const std::function<void()>& build, const std::string& kind) {
    try {
      build();
      ADD_FAILURE() << kind << " accepted a size that 3 does not divide";
    } catch (const DistributedError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(kind), std::string::npos) << message;
      EXPECT_NE(message.find("size 3 "), std::string::npos) << message;
      EXPECT_NE(message.find("10"), std::string::npos) << message;
    }
  };
  expect_refused([&] { nn::ColumnParallelLinear(nn::ColumnParallelLinearOptions(6, 10).tp(three)); },
                 "ColumnParallelLinear");
  expect_refused([&] { nn::RowParallelLinear(nn::RowParallelLinearOptions(10, 6).tp(three)); },
                 "RowParallelLinear");
  expect_refused([&] { nn::VocabParallelEmbedding(nn::VocabParallelEmbeddingOptions(10, 6).tp(three)); },
                 "VocabParallelEmbedding");
}

TEST_F(TensorParallelTest, ParallelLinearsAreDynamicLinearLayers) {
  auto model = std::make_shared<torch::nn::Module>();
  model->register_module("fc1", nn::ColumnParallelLinear(nn::ColumnParallelLinearOptions(4, 2 * n).tp(tp)));
  model->register_module("fc2", nn::RowParallelLinear(nn::RowParallelLinearOptions(2 * n, 4).tp(tp)));
  const auto layers = nn::named_dynamic_layers(*model);
  ASSERT_EQ(layers.size(), 2u);
  for (const auto& layer : layers) {
    EXPECT_NE(dynamic_cast<nn::LinearImpl*>(&layer.layer->as_module()), nullptr) << layer.name;
    EXPECT_NE(dynamic_cast<SplitModule*>(&layer.layer->as_module()), nullptr) << layer.name;
  }
  std::ostringstream printed;
  model->named_children()["fc1"]->pretty_print(printed);
  EXPECT_EQ(printed.str(), "mto::nn::ColumnParallelLinear(in_features=4, out_features=" + std::to_string(2 * n) +
                               " (local 2), bias=true, gather_output=false, tp=" + std::to_string(n) + ")");
}

}  // namespace
}  // namespace mto
