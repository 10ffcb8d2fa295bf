#pragma once

#include <ATen/core/Tensor.h>

namespace mto {
namespace distill {

// Model Optimizer's LogitsDistillationLoss with reduction "mean": T^2 times the KL divergence
// KL(softmax(teacher / T) || softmax(student / T)) over the last dimension, averaged over
// every element of the logits (PyTorch's "mean", not "batchmean"). The teacher's side is
// detached: gradients reach the student only.
at::Tensor logits_distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                    double temperature);

}  // namespace distill
}  // namespace mto
