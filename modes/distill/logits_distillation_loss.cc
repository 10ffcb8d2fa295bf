#include "modes/distill/logits_distillation_loss.h"

#include <ATen/ATen.h>

namespace mto {
namespace distill {

at::Tensor logits_distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                    double temperature) {
  const at::Tensor log_student = at::log_softmax(student_logits / temperature, -1);
  const at::Tensor teacher = at::softmax(teacher_logits.detach() / temperature, -1);
  return at::kl_div(log_student, teacher, at::Reduction::Mean) * (temperature * temperature);
}

}  // namespace distill
}  // namespace mto
