/* wipe — zeroing jansson string values before they are freed. */
#include "wipe.h"

#include <string.h>

void wipe_json(json_t *v)
{
    size_t i;
    const char *key;
    json_t *item;

    if (json_is_string(v)) {
        /* jansson keeps each string in its own heap buffer, which this
         * json_t owns; nobody reads it again once we are done. */
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item)
            wipe_json(item);
    } else if (json_is_object(v)) {
        json_object_foreach(v, key, item)
            wipe_json(item);
    }
}
