#pragma once

namespace mto {

// The cores of this node per rank started on it (OMPI_COMM_WORLD_LOCAL_SIZE ranks, or one
// outside mpirun), at least one: how many threads a rank's I/O may use without taking
// cores from the other ranks.
unsigned cores_per_local_rank();

}  // namespace mto
