#pragma once

#include <functional>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "opt/runtime_context.h"

namespace mto {
namespace distill {

// A teacher given as a built module instead of a checkpoint or model-like, in the context of
// apply_mode(..., "kd_loss", ...).
inline constexpr ContextKey<std::shared_ptr<torch::nn::Module>> kTeacher{"teacher"};

// The forward pass of a model (zoo::forward, for example): distillation runs it on the
// teacher and on the student.
using ForwardFunction = std::function<at::Tensor(torch::nn::Module&, const at::Tensor&)>;

// What a student carries while "kd_loss" is applied: a submodule "_distillation" of its root
// with no parameters or buffers. It holds the teacher without registering it, so the
// student's state dict, its optimizer's parameters and what a checkpoint saves are the
// student's alone, and train() / eval() leave the teacher in eval mode.
class DistillationHolder : public torch::nn::Module {
 public:
  DistillationHolder(std::shared_ptr<torch::nn::Module> teacher, std::string teacher_name, double temperature,
                     double kd_loss_weight);

  // Frozen (no parameter requires a gradient) and in eval mode.
  std::shared_ptr<torch::nn::Module> teacher;
  // What the errors of the training step call the teacher: its checkpoint or model-like.
  std::string teacher_name;
  double temperature;
  double kd_loss_weight;
  // The outputs of the last distillation_forward, until compute_kd_loss uses them.
  at::Tensor student_output;
  at::Tensor teacher_output;
};

// The holder of `model` (looking through a DataParallel wrapper), or nullptr when "kd_loss"
// is not applied.
std::shared_ptr<DistillationHolder> find_distillation(torch::nn::Module& model);

// Registers `holder` on `student` (its root). Throws ApplyModeError if it has one already.
void attach_distillation(torch::nn::Module& student, std::shared_ptr<DistillationHolder> holder);

// Unregisters the holder of `student`, if any.
void detach_distillation(torch::nn::Module& student);

// Runs `forward` on the teacher (without gradients) and then on `model`, the student (or
// its DataParallel wrapper); returns the student's output and keeps both for
// compute_kd_loss. Throws StateError if "kd_loss" is not applied, and std::invalid_argument
// naming the teacher if its forward fails on the input. Collective where the
// forward passes are (a tensor-parallel teacher and student): every rank calls it.
at::Tensor distillation_forward(torch::nn::Module& model, const ForwardFunction& forward, const at::Tensor& input);

// The loss of the last distillation_forward, as Model Optimizer's compute_kd_loss with a
// StaticLossBalancer: kd_loss_weight * kd + (1 - kd_loss_weight) * student_loss, where kd
// is logits_distillation_loss at the temperature; kd_loss_weight * kd alone when `student_loss`
// is undefined (the balancer's student term is left out, as Model Optimizer's is).
// Clears the kept outputs. Throws StateError if there was no distillation_forward since the
// last call, and std::invalid_argument naming the teacher if its logits' shape is not the
// student's.
at::Tensor compute_kd_loss(torch::nn::Module& model, const at::Tensor& student_loss = at::Tensor());

}  // namespace distill
}  // namespace mto
