// A header for the checks of the precompiled-header rule: one standard include is enough
// to give the .gch inputs besides itself.
#include <vector>
