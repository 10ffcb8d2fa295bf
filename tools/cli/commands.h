#pragma once

#include <CLI/CLI.hpp>

namespace mto {
namespace cli {

// Each adds its subcommand, with its options and its action, to the `mto` command line.
void add_train_command(CLI::App& app);
void add_optimize_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_import_command(CLI::App& app);
void add_export_command(CLI::App& app);

// Whether this process is rank 0 of the job mpirun launched (or runs alone), known before
// the world is joined: only rank 0 prints results, progress and help.
bool is_first_rank();

}  // namespace cli
}  // namespace mto
