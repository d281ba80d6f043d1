/* transport — is this connection fit for key material in clear? */
#include "api/transport.h"

#include <arpa/inet.h>
#include <string.h>

bool transport_is_loopback(const char *ip)
{
    struct in_addr a4;
    struct in6_addr a6;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (!ip)
        return false;
    if (inet_pton(AF_INET, ip, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, ip, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return true;
    /* An IPv4 client on a dual-stack listener: ::ffff:127.x.y.z. */
    return memcmp(a6.s6_addr, mapped, sizeof(mapped)) == 0 && a6.s6_addr[12] == 127;
}

bool transport_confidential(bool tls, const char *ip)
{
    return tls || transport_is_loopback(ip);
}
